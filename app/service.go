package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/jobs"
)

// Service holds Tether's operations. Each exported method is one
// transaction: it changes rows, marks the sync keys it touched and inserts
// their River jobs, then commits all of it at once (the outbox). A failure
// anywhere, River's included, rolls back everything.
type Service struct {
	DB       *pgxpool.Pool
	Enqueuer *jobs.Enqueuer
	Keys     *keyring.Ring
	OAuth    *OAuthConfig
	tracer   trace.Tracer // nil: tracing is off
}

// ServiceDeps are what a Service is built from; all are required but
// Enqueuer and OAuth, which only commands that change state need, and
// Tracer, which traces each transaction when set.
type ServiceDeps struct {
	DB       *pgxpool.Pool
	Enqueuer *jobs.Enqueuer
	Keys     *keyring.Ring
	OAuth    *OAuthConfig
	Tracer   trace.TracerProvider
}

// NewService refuses missing parts instead of failing on a nil field later.
func NewService(d ServiceDeps) (*Service, error) {
	switch {
	case d.DB == nil:
		return nil, errors.New("app.NewService: missing DB")
	case d.Keys == nil:
		return nil, errors.New("app.NewService: missing Keys")
	case d.Enqueuer == nil:
		return nil, errors.New("app.NewService: missing Enqueuer")
	case d.OAuth == nil || d.OAuth.Client == nil || d.OAuth.PublicURL == nil:
		return nil, errors.New("app.NewService: missing OAuth client or public URL")
	}
	s := &Service{DB: d.DB, Enqueuer: d.Enqueuer, Keys: d.Keys, OAuth: d.OAuth}
	if d.Tracer != nil {
		s.tracer = d.Tracer.Tracer(tracerName)
	}
	return s, nil
}

// queries are the sqlc queries; every method passes its transaction or the pool.
var queries = dbsqlc.New()

// Ping reports whether Postgres answers (readiness).
func (s *Service) Ping(ctx context.Context) error { return s.DB.Ping(ctx) }

// inTx runs fn in one transaction. fn gets the transaction's context (its
// trace span) and must use it rather than the caller's.
func (s *Service) inTx(ctx context.Context, fn func(ctx context.Context, tx pgx.Tx) error) (err error) {
	ctx, endSpan := s.traceTx(ctx)
	defer func() { endSpan(err) }()
	tx, err := s.DB.Begin(ctx)
	if err != nil {
		return unavailable(fmt.Errorf("error beginning transaction: %w", err))
	}
	defer tx.Rollback(ctx)
	ctx, handOff := s.Enqueuer.BeginHandOff(ctx)
	defer handOff.Release()
	if err := fn(ctx, tx); err != nil {
		return unavailable(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return unavailable(fmt.Errorf("error committing: %w", err))
	}
	// The change is durable (its job is the outbox): apply it now rather
	// than when River would start the job.
	handOff.Committed()
	return nil
}

// unavailable turns a lost database connection into a 503, so that clients
// retry instead of assuming a bug.
func unavailable(err error) error {
	var appErr *Error
	if errors.As(err, &appErr) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && !pgerrcode.IsConnectionException(pgErr.Code) && !pgerrcode.IsOperatorIntervention(pgErr.Code) {
		return err
	}
	var netErr net.Error
	if pgErr != nil || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &netErr) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || pgconn.SafeToRetry(err) || isConnError(err) {
		return &wrappedError{app: Errorf(EUNAVAILABLE, "The database is unavailable; try again."), cause: err}
	}
	return err
}

func isConnError(err error) bool {
	var connErr *pgconn.ConnectError
	return errors.As(err, &connErr) || strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "connection refused")
}

// wrappedError is an application error that keeps its cause for the log.
type wrappedError struct {
	app   *Error
	cause error
}

func (e *wrappedError) Error() string { return e.app.Error() + ": " + e.cause.Error() }

func (e *wrappedError) As(target any) bool {
	if t, ok := target.(**Error); ok {
		*t = e.app
		return true
	}
	return false
}

func (e *wrappedError) Unwrap() error { return e.cause }

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func notFound(err error, what string) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return Errorf(ENOTFOUND, "No such %s.", what)
	}
	return unavailable(fmt.Errorf("error reading %s: %w", what, err))
}

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

func isForeignKeyViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23503"
}
