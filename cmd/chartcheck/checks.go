package main

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// problems collects what is wrong, each naming its object.
type problems []error

func (p *problems) add(o obj, format string, args ...any) {
	*p = append(*p, fmt.Errorf("%s: %s", o.id(), fmt.Sprintf(format, args...)))
}

func check(objs []obj, production bool) error {
	var p problems
	byKind := map[string][]obj{}
	for _, o := range objs {
		byKind[o.kind()] = append(byKind[o.kind()], o)
	}
	want := map[string]int{"Deployment": 2, "Service": 2, "Job": 1, "PodDisruptionBudget": 2}
	if production {
		want["HorizontalPodAutoscaler"], want["ServiceMonitor"], want["PrometheusRule"] = 2, 1, 1
	}
	for _, kind := range []string{"Deployment", "Service", "Job", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule"} {
		if got := len(byKind[kind]); got != want[kind] {
			p = append(p, fmt.Errorf("%d %s objects, want %d", got, kind, want[kind]))
		}
	}
	roles := map[string]bool{}
	for _, d := range byKind["Deployment"] {
		role := checkDeployment(&p, d, production)
		roles[role] = true
	}
	if !roles["api"] || !roles["worker"] {
		p = append(p, fmt.Errorf("want one Deployment per role (api, worker), got %v", roles))
	}
	for _, j := range byKind["Job"] {
		checkMigrate(&p, j)
	}
	for _, r := range byKind["PrometheusRule"] {
		if !strings.Contains(fmt.Sprint(get(r, "spec", "groups")), "TetherRevocationLagging") {
			p.add(r, "does not carry the rules of deploy/prometheus/tether-alerts.yml")
		}
	}
	return errors.Join(p...)
}

// checkDeployment checks one role's Deployment and returns the role.
func checkDeployment(p *problems, d obj, production bool) string {
	pod := get(d, "spec", "template", "spec")
	containers := list(pod, "containers")
	if len(containers) != 1 {
		p.add(d, "%d containers, want 1", len(containers))
		return ""
	}
	c := containers[0]
	args := fmt.Sprint(list(c, "args"))
	role := ""
	for _, r := range []string{"api", "worker"} {
		if args == "[serve --role "+r+"]" {
			role = r
		}
	}
	if role == "" {
		p.add(d, "args %s, want serve --role api|worker", args)
	}
	if got := str(c, "livenessProbe", "httpGet", "path"); got != "/healthz" {
		p.add(d, "liveness probe on %q, want /healthz", got)
	}
	if got := str(c, "readinessProbe", "httpGet", "path"); got != "/readyz" {
		p.add(d, "readiness probe on %q, want /readyz", got)
	}
	if get(d, "spec", "strategy", "rollingUpdate", "maxUnavailable") != 0 {
		p.add(d, "a rollout may drop capacity: want maxUnavailable 0")
	}
	if _, fixed := get(d, "spec", "replicas").(int); fixed == production {
		p.add(d, "replicas must be set exactly when no HPA scales the Deployment")
	}
	checkPod(p, d, pod, c)
	env := envOf(c)
	if production {
		for _, name := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "TETHER_AUTH_ISSUER", "TETHER_AUTH_AUDIENCE", "TETHER_PUBLIC_URL"} {
			if _, ok := env[name]; !ok {
				p.add(d, "production values set no %s", name)
			}
		}
		if !isSecretRef(env["OTEL_EXPORTER_OTLP_HEADERS"]) {
			p.add(d, "OTEL_EXPORTER_OTLP_HEADERS must come from a Secret")
		}
	} else if _, ok := env["OTEL_EXPORTER_OTLP_ENDPOINT"]; ok {
		p.add(d, "tracing must be off by default")
	}
	return role
}

func checkMigrate(p *problems, j obj) {
	hooks := str(j, "metadata", "annotations", "helm.sh/hook")
	if !strings.Contains(hooks, "pre-install") || !strings.Contains(hooks, "pre-upgrade") {
		p.add(j, "helm.sh/hook %q, want pre-install,pre-upgrade", hooks)
	}
	pod := get(j, "spec", "template", "spec")
	containers := list(pod, "containers")
	if len(containers) != 1 || fmt.Sprint(list(containers[0], "args")) != "[migrate up]" {
		p.add(j, "want one container running migrate up")
		return
	}
	if str(pod, "restartPolicy") != "Never" {
		p.add(j, "restartPolicy must be Never (the Job retries)")
	}
	checkPod(p, j, pod, containers[0])
}

// secretName matches variables that hold secrets: they must never have a
// literal value in a rendering.
var secretName = regexp.MustCompile(`DATABASE_URL|TOKEN|SECRET|KEYS|HEADERS|PASSWORD`)

// checkPod checks what every Tether pod needs: non-root, read-only root,
// no privilege escalation, resources, required secrets by reference only.
func checkPod(p *problems, o obj, pod, c any) {
	if get(pod, "securityContext", "runAsNonRoot") != true {
		p.add(o, "pod securityContext.runAsNonRoot must be true")
	}
	if get(pod, "automountServiceAccountToken") != false {
		p.add(o, "Tether calls no Kubernetes API: automountServiceAccountToken must be false")
	}
	sc := get(c, "securityContext")
	for key, want := range map[string]any{"readOnlyRootFilesystem": true, "runAsNonRoot": true, "allowPrivilegeEscalation": false} {
		if get(sc, key) != want {
			p.add(o, "container securityContext.%s must be %v", key, want)
		}
	}
	if !slices.Contains(list(sc, "capabilities", "drop"), any("ALL")) {
		p.add(o, "container must drop ALL capabilities")
	}
	if str(c, "resources", "requests", "memory") == "" || str(c, "resources", "limits", "memory") == "" {
		p.add(o, "container needs memory requests and limits")
	}
	env := envOf(c)
	for _, name := range []string{"TETHER_DATABASE_URL", "TETHER_ENCRYPTION_KEYS", "TETHER_SPICEDB_ENDPOINT"} {
		if _, ok := env[name]; !ok {
			p.add(o, "no %s", name)
		}
	}
	for _, e := range list(c, "env") { // every entry: a name may repeat
		if name := str(e, "name"); secretName.MatchString(name) && !isSecretRef(e) {
			p.add(o, "%s has a literal value: secrets come from a Secret only", name)
		}
	}
}

func envOf(c any) map[string]any {
	out := map[string]any{}
	for _, e := range list(c, "env") {
		out[str(e, "name")] = e
	}
	return out
}

func isSecretRef(e any) bool {
	return e != nil && get(e, "value") == nil && str(e, "valueFrom", "secretKeyRef", "name") != "" &&
		str(e, "valueFrom", "secretKeyRef", "key") != ""
}
