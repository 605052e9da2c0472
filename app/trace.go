package app

import (
	"context"
	"errors"
	"runtime"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// tracerName is this package's instrumentation scope.
const tracerName = "github.com/tetherhq/tether/app"

// traceRequests starts a server span for every request but the probes and
// /metrics, continuing a trace the caller sent (W3C traceparent). The span
// is named by method and route pattern and carries only those and the
// status: never the path (ids), the query (OAuth2 codes and states) or a
// header.
func traceRequests(tp trace.TracerProvider) echo.MiddlewareFunc {
	tracer := tp.Tracer(tracerName)
	propagator := propagation.TraceContext{}
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			route := c.Path()
			if route == "/healthz" || route == "/readyz" || route == "/metrics" {
				return next(c)
			}
			if route == "" {
				route = "unmatched"
			}
			req := c.Request()
			method := spanMethod(req.Method)
			ctx := propagator.Extract(req.Context(), propagation.HeaderCarrier(req.Header))
			ctx, span := tracer.Start(ctx, method+" "+route, trace.WithSpanKind(trace.SpanKindServer),
				trace.WithAttributes(semconv.HTTPRequestMethodKey.String(method), semconv.HTTPRoute(route)))
			defer span.End()
			c.SetRequest(req.WithContext(ctx))
			err := next(c)
			if err != nil {
				c.Error(err) // writes the response, so that its status is known
			}
			status := c.Response().Status
			span.SetAttributes(semconv.HTTPResponseStatusCode(status))
			if status >= 500 {
				span.SetStatus(codes.Error, "")
			}
			return nil
		}
	}
}

// spanMethod keeps a method the client chose out of the span unless it is
// a standard one.
func spanMethod(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE":
		return m
	}
	return "_OTHER"
}

// traceTx starts the span of a service transaction, named after the
// operation that runs it (the method calling inTx), so that a
// trace reads "tether.tx ConnectionSetStatus" without every method naming
// itself. end records the outcome as an error code only: messages may quote
// the input.
func (s *Service) traceTx(ctx context.Context) (context.Context, func(error)) {
	if s.tracer == nil {
		return ctx, func(error) {}
	}
	ctx, span := s.tracer.Start(ctx, "tether.tx "+operationName(3), trace.WithAttributes(semconv.DBSystemNamePostgreSQL))
	return ctx, func(err error) {
		if err != nil {
			code := EINTERNAL
			var appErr *Error
			if errors.As(err, &appErr) {
				code = appErr.Code
			} else if errors.Is(err, pgx.ErrNoRows) {
				code = ENOTFOUND
			}
			span.SetAttributes(attribute.String("tether.error_code", code))
			span.SetStatus(codes.Error, code)
		}
		span.End()
	}
}

// operationName is the name of the function skip frames up ("ConnectionSetStatus"
// for app.(*Service).ConnectionSetStatus.func1).
func operationName(skip int) string {
	pcs := make([]uintptr, 1)
	if runtime.Callers(skip+1, pcs) == 0 {
		return "unknown"
	}
	frame, _ := runtime.CallersFrames(pcs).Next() // inlined frames resolved
	name := frame.Function
	name = name[strings.LastIndex(name, "/")+1:] // app.(*Service).X.func1
	parts := strings.Split(name, ".")
	for i := len(parts) - 1; i > 0; i-- {
		if !strings.HasPrefix(parts[i], "func") && parts[i] != "" {
			return parts[i]
		}
	}
	return name
}
