package jobs

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// One line per (kind, error class) and interval, the next one saying how
// many it stands for; other classes and kinds are not held back.
func TestFailureLogRateLimit(t *testing.T) {
	t.Parallel()
	var l failureLog
	t0 := time.Unix(1_700_000_000, 0)
	ok, suppressed := l.allow(KeyKindConnection, "Unavailable", t0)
	require.True(t, ok)
	require.Zero(t, suppressed)
	for i := 1; i <= 500; i++ {
		ok, _ = l.allow(KeyKindConnection, "Unavailable", t0.Add(time.Duration(i)*10*time.Millisecond))
		require.False(t, ok, "attempt %d within the interval", i)
	}
	ok, _ = l.allow(KeyKindPool, "Unavailable", t0.Add(time.Second))
	require.True(t, ok, "another kind has its own budget")
	ok, _ = l.allow(KeyKindConnection, "DeadlineExceeded", t0.Add(time.Second))
	require.True(t, ok, "another class has its own budget")
	ok, suppressed = l.allow(KeyKindConnection, "Unavailable", t0.Add(failureLogInterval))
	require.True(t, ok)
	require.Equal(t, 500, suppressed)
}

func TestErrorClass(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("error writing: %w", status.Error(codes.Unavailable, "down")), "Unavailable"},
		{status.Error(codes.FailedPrecondition, "object definition oauth2_client not found"), "FailedPrecondition"},
		{fmt.Errorf("error reading: %w", &pgconn.PgError{Code: "57P01"}), "Postgres"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), "Timeout"},
		{context.Canceled, "Canceled"},
		{errors.New("dial tcp: connection reset"), "Network"},
	} {
		require.Equal(t, tc.want, ErrorClass(tc.err), "%v", tc.err)
	}
}
