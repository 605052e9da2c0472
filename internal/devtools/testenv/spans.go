package testenv

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// SpanRecorder is a tracer provider that keeps every finished span in
// memory, exported synchronously: a span is visible as soon as it ends.
type SpanRecorder struct {
	*sdktrace.TracerProvider
	exporter *tracetest.InMemoryExporter
}

// NewSpanRecorder returns a recorder that records every span (sampler
// AlwaysSample, whatever OTEL_TRACES_SAMPLER says); it shuts down when the
// test ends.
func NewSpanRecorder(tb testing.TB) *SpanRecorder {
	tb.Helper()
	exporter := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tp.Shutdown(ctx)
	})
	return &SpanRecorder{TracerProvider: tp, exporter: exporter}
}

// Spans returns the spans ended so far.
func (r *SpanRecorder) Spans() tracetest.SpanStubs { return r.exporter.GetSpans() }

// Text is every recorded span written out — names, attributes, events,
// links, status descriptions and the resource — for tests that look for
// what must never be in a span.
func (r *SpanRecorder) Text() string {
	var b strings.Builder
	kv := func(attrs []attribute.KeyValue) {
		for _, a := range attrs {
			fmt.Fprintf(&b, " %s=%s", a.Key, a.Value.Emit())
		}
	}
	for _, s := range r.Spans() {
		fmt.Fprintf(&b, "span %q status=%s %q", s.Name, s.Status.Code, s.Status.Description)
		kv(s.Attributes)
		for _, e := range s.Events {
			fmt.Fprintf(&b, " event %q", e.Name)
			kv(e.Attributes)
		}
		for _, l := range s.Links {
			b.WriteString(" link")
			kv(l.Attributes)
		}
		if s.Resource != nil {
			kv(s.Resource.Attributes())
		}
		b.WriteByte('\n')
	}
	return b.String()
}
