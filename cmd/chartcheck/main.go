// Command chartcheck is the values test of the Helm chart: `make chart`
// renders deploy/helm/tether with the default values and with
// ci/production-values.yaml, and chartcheck reads each rendering and fails,
// naming the object, unless it holds what a production deployment needs —
// both roles, the migrate hook, probes, a non-root read-only security
// context, resources, disruption budgets, secrets only by reference — and
// the optional parts exactly when they are enabled.
//
//	chartcheck -default default.yaml -production production.yaml
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"
)

func main() {
	def := flag.String("default", "", "the chart rendered with its default values")
	prod := flag.String("production", "", "the chart rendered with ci/production-values.yaml")
	flag.Parse()
	if *def == "" || *prod == "" {
		fmt.Fprintln(os.Stderr, "usage: chartcheck -default FILE -production FILE")
		os.Exit(2)
	}
	var failed bool
	for _, r := range []struct {
		path       string
		production bool
	}{{*def, false}, {*prod, true}} {
		objs, err := load(r.path)
		if err == nil {
			err = check(objs, r.production)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "chartcheck: %s:\n%v\n", r.path, err)
			failed = true
			continue
		}
		fmt.Printf("chartcheck: %s: %d objects ok\n", r.path, len(objs))
	}
	if failed {
		os.Exit(1)
	}
}

// obj is one rendered Kubernetes object.
type obj map[string]any

func (o obj) kind() string { return str(o, "kind") }
func (o obj) name() string { return str(o, "metadata", "name") }
func (o obj) id() string   { return o.kind() + "/" + o.name() }

func load(path string) ([]obj, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []obj
	dec := yaml.NewDecoder(f)
	for {
		var o obj
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("not YAML: %w", err)
		}
		if o != nil {
			out = append(out, o)
		}
	}
}

// get walks maps by key and lists by index (an int).
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(obj)
			if !ok {
				mm, ok2 := v.(map[string]any)
				if !ok2 {
					return nil
				}
				m = mm
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, path ...any) string { s, _ := get(v, path...).(string); return s }

func list(v any, path ...any) []any { l, _ := get(v, path...).([]any); return l }
