{{/* Names and labels. */}}
{{- define "tether.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tether.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels of one component (api, worker, migrate). */}}
{{- define "tether.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* A role's image: its imageTag, else image.tag, else the appVersion. */}}
{{- define "tether.image" -}}
{{- $v := index .root.Values .role -}}
{{ .root.Values.image.repository }}:{{ $v.imageTag | default .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- end -}}

{{/* One secret variable from the existing Secret, skipped when its key is "". */}}
{{- define "tether.secretEnv" -}}
{{- if .key }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end }}
{{- end -}}

{{/*
The environment every Tether process gets. Rendered inline (no ConfigMap):
the migrate hook runs before any of the release's own resources exist.
*/}}
{{- define "tether.env" -}}
{{- $c := .Values.config -}}
{{- $s := .Values.secrets -}}
{{- if not $s.existingSecret }}{{ fail "secrets.existingSecret is required: the Secret holding TETHER_DATABASE_URL and TETHER_ENCRYPTION_KEYS" }}{{ end -}}
{{- if not $s.keys.databaseURL }}{{ fail "secrets.keys.databaseURL is required" }}{{ end -}}
{{- if not $s.keys.encryptionKeys }}{{ fail "secrets.keys.encryptionKeys is required" }}{{ end -}}
{{- if and $c.authIssuer $s.keys.authHMACSecret }}{{ fail "set config.authIssuer or secrets.keys.authHMACSecret, not both" }}{{ end -}}
{{- if and $c.authIssuer (not $c.authAudience) }}{{ fail "config.authAudience is required with config.authIssuer" }}{{ end -}}
- name: TETHER_HTTP_ADDR
  value: "0.0.0.0:8080"
- name: TETHER_SPICEDB_ENDPOINT
  value: {{ required "config.spicedbEndpoint is required" $c.spicedbEndpoint | quote }}
- name: TETHER_SPICEDB_INSECURE
  value: {{ $c.spicedbInsecure | quote }}
{{- with $c.publicURL }}
- name: TETHER_PUBLIC_URL
  value: {{ . | quote }}
{{- end }}
{{- with $c.allowedOrigins }}
- name: TETHER_ALLOWED_ORIGINS
  value: {{ join "," . | quote }}
{{- end }}
{{- with $c.authIssuer }}
- name: TETHER_AUTH_ISSUER
  value: {{ . | quote }}
- name: TETHER_AUTH_AUDIENCE
  value: {{ $c.authAudience | quote }}
{{- end }}
- name: TETHER_AUTH_ADMIN_ROLE
  value: {{ $c.authAdminRole | quote }}
- name: TETHER_LOG_LEVEL
  value: {{ $c.logLevel | quote }}
- name: TETHER_RECONCILE_INTERVAL
  value: {{ $c.reconcileInterval | quote }}
- name: TETHER_SHUTDOWN_TIMEOUT
  value: {{ $c.shutdownTimeout | quote }}
{{- range $name, $value := $c.extra }}
{{- if regexMatch "DATABASE_URL|TOKEN|SECRET|KEYS|PASSWORD" $name }}{{ fail (printf "config.extra.%s looks like a secret: put it in secrets.existingSecret" $name) }}{{ end }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- include "tether.secretEnv" (dict "name" "TETHER_DATABASE_URL" "secret" $s.existingSecret "key" $s.keys.databaseURL) }}
{{- include "tether.secretEnv" (dict "name" "TETHER_SPICEDB_TOKEN" "secret" $s.existingSecret "key" $s.keys.spicedbToken) }}
{{- include "tether.secretEnv" (dict "name" "TETHER_ENCRYPTION_KEYS" "secret" $s.existingSecret "key" $s.keys.encryptionKeys) }}
{{- include "tether.secretEnv" (dict "name" "TETHER_AUTH_HMAC_SECRET" "secret" $s.existingSecret "key" $s.keys.authHMACSecret) }}
{{- with .Values.tracing }}
{{- if .endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .protocol | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .serviceName | quote }}
{{- range $name, $value := .extra }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- include "tether.secretEnv" (dict "name" "OTEL_EXPORTER_OTLP_HEADERS" "secret" .headersSecret.name "key" .headersSecret.key) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Pod settings shared by every Tether pod. */}}
{{- define "tether.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
