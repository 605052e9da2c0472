package telemetry

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// NewPgxTracer traces Postgres statements, batches and copies made while a
// traced operation runs (an HTTP request, a job, a group-committed write).
// Statements outside one — River's fetch polls, leader elections — make no
// span: they would be a stream of one-span traces.
//
// A span is named after the sqlc query ("SyncFenceMany"; River's queries
// are sqlc queries too) or, failing that, the statement's first keyword. It
// carries neither the SQL text nor any argument, and on error only the
// SQLSTATE: Postgres messages may quote the values a user sent.
func NewPgxTracer(tp trace.TracerProvider) *PgxTracer {
	return &PgxTracer{tracer: tp.Tracer("github.com/tetherhq/tether/internal/telemetry/pgx")}
}

// PgxTracer implements pgx's QueryTracer, BatchTracer and CopyFromTracer.
type PgxTracer struct {
	tracer trace.Tracer
}

// spanKey marks the span this tracer started (nil if none), so that an end
// never ends a caller's span.
type spanKey struct{}

func (t *PgxTracer) start(ctx context.Context, name, operation string, extra ...trace.SpanStartOption) context.Context {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return context.WithValue(ctx, spanKey{}, trace.Span(nil))
	}
	opts := append([]trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		semconv.DBSystemNamePostgreSQL, semconv.DBOperationName(operation), semconv.DBQuerySummary(name),
	)}, extra...)
	ctx, span := t.tracer.Start(ctx, name, opts...)
	return context.WithValue(ctx, spanKey{}, span)
}

func end(ctx context.Context, err error, rows int64) {
	span, _ := ctx.Value(spanKey{}).(trace.Span)
	if span == nil {
		return
	}
	if rows >= 0 {
		span.SetAttributes(semconv.DBResponseReturnedRows(int(rows)))
	}
	if err != nil {
		code := "error"
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			code = pgErr.Code
			span.SetAttributes(semconv.DBResponseStatusCode(code))
		}
		span.SetStatus(codes.Error, code)
	}
	span.End()
}

// TraceQueryStart implements pgx.QueryTracer.
func (t *PgxTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	name, operation := QueryName(data.SQL)
	return t.start(ctx, name, operation)
}

// TraceQueryEnd implements pgx.QueryTracer.
func (t *PgxTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	end(ctx, data.Err, data.CommandTag.RowsAffected())
}

// TraceBatchStart implements pgx.BatchTracer.
func (t *PgxTracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchStartData) context.Context {
	return t.start(ctx, "batch", "BATCH", trace.WithAttributes(semconv.DBOperationBatchSize(data.Batch.Len())))
}

// TraceBatchQuery implements pgx.BatchTracer: a failed statement marks the
// batch's span.
func (t *PgxTracer) TraceBatchQuery(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchQueryData) {
	span, _ := ctx.Value(spanKey{}).(trace.Span)
	if span == nil || data.Err == nil {
		return
	}
	var pgErr *pgconn.PgError
	if errors.As(data.Err, &pgErr) {
		span.SetAttributes(semconv.DBResponseStatusCode(pgErr.Code))
	}
	span.SetStatus(codes.Error, "a statement of the batch failed")
}

// TraceBatchEnd implements pgx.BatchTracer.
func (t *PgxTracer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchEndData) {
	end(ctx, data.Err, -1)
}

// TraceCopyFromStart implements pgx.CopyFromTracer.
func (t *PgxTracer) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceCopyFromStartData) context.Context {
	return t.start(ctx, "COPY "+data.TableName.Sanitize(), "COPY")
}

// TraceCopyFromEnd implements pgx.CopyFromTracer.
func (t *PgxTracer) TraceCopyFromEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceCopyFromEndData) {
	end(ctx, data.Err, data.CommandTag.RowsAffected())
}

// QueryName returns a statement's span name — its sqlc name ("-- name: X
// :one") or else its first keyword — and its operation (first keyword).
func QueryName(sql string) (name, operation string) {
	rest := strings.TrimSpace(sql)
	for strings.HasPrefix(rest, "--") {
		line, after, _ := strings.Cut(rest, "\n")
		if n, ok := strings.CutPrefix(strings.TrimSpace(strings.TrimPrefix(line, "--")), "name:"); ok && name == "" {
			if fields := strings.Fields(n); len(fields) > 0 {
				name = fields[0]
			}
		}
		rest = strings.TrimSpace(after)
	}
	operation = "UNKNOWN"
	if fields := strings.FieldsFunc(rest, func(r rune) bool { return r == ' ' || r == '\n' || r == '\t' || r == '(' || r == ';' }); len(fields) > 0 {
		operation = strings.ToUpper(fields[0])
	}
	if strings.IndexFunc(operation, func(r rune) bool { return r < 'A' || r > 'Z' }) >= 0 {
		operation = "UNKNOWN" // never a literal or an identifier
	}
	if name == "" {
		name = operation
	}
	return name, operation
}
