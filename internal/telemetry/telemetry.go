// Package telemetry is Tether's OpenTelemetry tracing: the tracer provider
// that exports over OTLP when OpenTelemetry's variables ask for it, and the
// instrumentation of the parts Tether does not own — Postgres (pgx), SpiceDB
// (gRPC) and River. The engine wires it; with no provider nothing here is
// installed at all, so tracing that is off costs nothing.
//
// Span attributes carry names, ids Tether generates, counts and status
// codes only: never a query's arguments, a token, a secret or text a user
// typed (a test checks every span of a full OAuth2 run for secrets).
package telemetry

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/tetherhq/tether/internal/config"
)

// DefaultServiceName names the service when neither OTEL_SERVICE_NAME nor
// OTEL_RESOURCE_ATTRIBUTES does.
const DefaultServiceName = "tether"

// RoleAttribute tells which kind of process (api, worker, all, cli) made a span.
const RoleAttribute = attribute.Key("tether.role")

// NewTracerProvider builds the SDK's tracer provider exporting over OTLP
// with cfg's protocol. The exporter reads its other variables (endpoint,
// headers, certificates, timeout, compression), the batch processor its
// OTEL_BSP_* and the sampler OTEL_TRACES_SAMPLER, as the SDK defines them.
// Shut it down to flush the last spans.
func NewTracerProvider(ctx context.Context, cfg config.Tracing, role string, logger *slog.Logger) (*sdktrace.TracerProvider, error) {
	var exporter sdktrace.SpanExporter
	var err error
	switch cfg.TracesProtocol {
	case config.ProtocolGRPC:
		exporter, err = otlptracegrpc.New(ctx)
	case config.ProtocolHTTPProtobuf:
		exporter, err = otlptracehttp.New(ctx)
	default:
		return nil, fmt.Errorf("telemetry: tracing is off (protocol %q)", cfg.TracesProtocol)
	}
	if err != nil {
		return nil, fmt.Errorf("error creating the OTLP trace exporter: %w", err)
	}
	res, err := newResource(ctx, cfg, role)
	if err != nil {
		_ = exporter.Shutdown(ctx)
		return nil, err
	}
	setErrorHandler(logger)
	return sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res)), nil
}

// newResource describes this process: the service name (default tether,
// then OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME), its role, host
// and pid. Command-line arguments are left out on purpose.
func newResource(ctx context.Context, cfg config.Tracing, role string) (*resource.Resource, error) {
	opts := []resource.Option{
		resource.WithAttributes(semconv.ServiceName(DefaultServiceName)),
		resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithHost(), resource.WithProcessPID(),
		resource.WithAttributes(RoleAttribute.String(role)),
	}
	if cfg.ServiceName != "" {
		opts = append(opts, resource.WithAttributes(semconv.ServiceName(cfg.ServiceName)))
	}
	res, err := resource.New(ctx, opts...)
	if err != nil {
		return nil, &config.Error{Variable: "OTEL_RESOURCE_ATTRIBUTES", Problem: err.Error()}
	}
	return res, nil
}

var errorHandlerOnce sync.Once

// setErrorHandler sends the SDK's own errors (a collector that is down) to
// Tether's log instead of the standard logger. The handler is global in
// OpenTelemetry, so the first process-wide logger wins.
func setErrorHandler(logger *slog.Logger) {
	if logger == nil {
		return
	}
	errorHandlerOnce.Do(func() {
		otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
			logger.Warn("OpenTelemetry export failed", "error", err)
		}))
	})
}
