package config

import (
	"net/url"
	"strings"
)

// Tracing says whether Tether exports traces, read from OpenTelemetry's own
// variables. Only what decides on or off, the protocol and the service name
// is read here; the OTLP exporter reads the rest of its variables (headers,
// certificates, timeouts, compression) itself, as its SDK defines them.
type Tracing struct {
	// TracesProtocol is empty when tracing is off (no endpoint set, or
	// OTEL_SDK_DISABLED / OTEL_TRACES_EXPORTER=none), else "http/protobuf"
	// or "grpc".
	TracesProtocol string
	// ServiceName is OTEL_SERVICE_NAME; empty lets OTEL_RESOURCE_ATTRIBUTES'
	// service.name, then "tether", name the service.
	ServiceName string
}

// TracingOn reports whether traces are exported.
func (t Tracing) TracingOn() bool { return t.TracesProtocol != "" }

// Trace protocols the Go SDK exports with.
const (
	ProtocolHTTPProtobuf = "http/protobuf"
	ProtocolGRPC         = "grpc"
)

func (r *reader) tracing(t *Tracing) {
	t.ServiceName = r.str("OTEL_SERVICE_NAME", "")
	endpointVar := "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	endpoint := r.str(endpointVar, "")
	if endpoint == "" {
		endpointVar = "OTEL_EXPORTER_OTLP_ENDPOINT"
		endpoint = r.str(endpointVar, "")
	}
	disabled := r.boolean("OTEL_SDK_DISABLED", false)
	switch exporter := strings.ToLower(r.str("OTEL_TRACES_EXPORTER", "otlp")); exporter {
	case "otlp":
	case "none":
		disabled = true
	default:
		r.bad("OTEL_TRACES_EXPORTER", "Tether exports traces over OTLP only: must be otlp or none, got %q", exporter)
	}
	protocolVar := "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	protocol := r.str(protocolVar, "")
	if protocol == "" {
		protocolVar = "OTEL_EXPORTER_OTLP_PROTOCOL"
		protocol = r.str(protocolVar, ProtocolHTTPProtobuf)
	}
	if protocol != ProtocolHTTPProtobuf && protocol != ProtocolGRPC {
		r.bad(protocolVar, "must be http/protobuf or grpc (the Go SDK has no http/json), got %q", protocol)
	}
	if endpoint == "" || disabled {
		return
	}
	if u, err := url.Parse(endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		// The SDK would silently fall back to localhost: refuse instead.
		// The value is not echoed: a URL may carry credentials.
		r.bad(endpointVar, "must be an http(s) URL such as http://otel-collector:4318")
		return
	}
	t.TracesProtocol = protocol
}
