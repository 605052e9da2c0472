package jobs

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/status"

	"github.com/tetherhq/tether/jobs/spicedb"
)

// failureLogInterval is how often at most one (kind, error class) pair is
// logged: a SpiceDB outage with thousands of keys retrying writes a line
// every interval per class, each with the count it stands for.
const failureLogInterval = 10 * time.Second

// failureLog rate-limits the log lines about failed sync attempts. The
// zero value is ready to use.
type failureLog struct {
	mu      sync.Mutex
	classes map[failureClass]*failureCount
}

type failureClass struct{ kind, class string }

type failureCount struct {
	loggedAt   time.Time
	suppressed int
}

// allow reports whether a failure of this class may be logged now, and how
// many were suppressed since the last line.
func (l *failureLog) allow(kind, class string, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.classes == nil {
		l.classes = map[failureClass]*failureCount{}
	}
	c := l.classes[failureClass{kind, class}]
	if c == nil {
		c = &failureCount{}
		l.classes[failureClass{kind, class}] = c
	}
	if !c.loggedAt.IsZero() && now.Sub(c.loggedAt) < failureLogInterval {
		c.suppressed++
		return false, 0
	}
	suppressed := c.suppressed
	c.loggedAt, c.suppressed = now, 0
	return true, suppressed
}

// logFailure logs a failed sync attempt: WARN when it will be retried,
// ERROR when it is permanent. Ids and a scrubbed message only: the key id
// names a provider and a user or a pool, never a token.
func (s *Syncer) logFailure(ctx context.Context, kind, keyID string, attempt int, transient bool, err error) {
	if s.Logger == nil {
		return
	}
	class := ErrorClass(err)
	ok, suppressed := s.failures.allow(kind, class, time.Now())
	if !ok {
		return
	}
	level, msg := slog.LevelWarn, "sync attempt failed; retrying"
	if !transient {
		level, msg = slog.LevelError, "permanent sync error; the reconciler will retry the key"
	}
	s.Logger.Log(ctx, level, msg, "kind", kind, "key", keyID, "attempt", attempt, "error_class", class,
		"error", spicedb.ScrubError(err), "suppressed_since_last", suppressed)
}

// ErrorClass names the kind of a sync failure for logs: the gRPC code of a
// SpiceDB error (Unavailable, DeadlineExceeded, FailedPrecondition, …),
// Postgres for a database error, Canceled or Timeout for an interrupted
// attempt, Network otherwise.
func ErrorClass(err error) string {
	var pgErr *pgconn.PgError
	var connErr *pgconn.ConnectError
	switch {
	case errors.Is(err, context.Canceled):
		return "Canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "Timeout"
	case errors.As(err, &pgErr), errors.As(err, &connErr):
		return "Postgres"
	}
	if st, ok := status.FromError(spicedb.UnwrapStatus(err)); ok {
		return st.Code().String()
	}
	return "Network"
}
