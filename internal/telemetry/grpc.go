package telemetry

import (
	"context"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

// GRPCDialOption traces the SpiceDB client's calls made while a traced
// operation runs (otelgrpc: method, status code, server address; never a
// request's content or its metadata, where the SpiceDB key travels). Calls
// outside one (readiness checks, the state gauges) make no span. The trace
// context goes to SpiceDB in the call's metadata, so a SpiceDB that traces
// joins the same trace.
func GRPCDialOption(tp trace.TracerProvider) grpc.DialOption {
	return grpc.WithStatsHandler(parentOnly{otelgrpc.NewClientHandler(
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()),
		otelgrpc.WithPropagators(propagation.TraceContext{}),
	)})
}

// parentOnly hands a call to the tracing handler only when its context
// carries a recording span.
type parentOnly struct{ stats.Handler }

type untracedKey struct{}

func (h parentOnly) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return context.WithValue(ctx, untracedKey{}, true)
	}
	return h.Handler.TagRPC(ctx, info)
}

func (h parentOnly) HandleRPC(ctx context.Context, rs stats.RPCStats) {
	if ctx.Value(untracedKey{}) != nil {
		return
	}
	h.Handler.HandleRPC(ctx, rs)
}
