package telemetry

import (
	"github.com/riverqueue/river/rivertype"
	"github.com/riverqueue/rivercontrib/otelriver"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
)

// RiverPlugin traces River: a producer span for every insert (inside the
// transaction that makes the change), whose trace context rides in the
// job's metadata, and a consumer span for every job worked, linked to the
// span that inserted it (a link, not a parent: a job may run long after its
// insert, or again after a retry). Attributes are the job's kind, queue,
// priority, attempt, id, tags and times — never its args.
func RiverPlugin(tp trace.TracerProvider) rivertype.Plugin {
	return otelriver.NewMiddleware(&otelriver.MiddlewareConfig{
		TracerProvider:              tp,
		MeterProvider:               metricnoop.NewMeterProvider(), // Tether's metrics are Prometheus'
		EnableTracePropagation:      true,
		EnableWorkSpanJobKindSuffix: true,
	})
}
