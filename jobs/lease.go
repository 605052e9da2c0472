package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/tetherhq/tether/db/dbsqlc"
)

// DefaultWorkerLeaseTTL is how long a worker process that stopped renewing
// its lease keeps its running jobs before the other workers take them over.
const DefaultWorkerLeaseTTL = 5 * time.Second

// ErrWorkerLeaseLost says a write was refused because this process may no
// longer write for the job: its lease lapsed (other workers may be taking its
// jobs over), or the job was taken over already. Transient for the key: the
// job, or the one that replaced it, writes again.
var ErrWorkerLeaseLost = errors.New("worker lease lost")

// workerLease is a worker process's claim, renewed in Postgres, that it is
// alive. While it holds, nobody else runs its jobs. Once it has expired, the
// other workers cancel the process's running jobs and insert each again
// (reclaim.go); the process writes nothing to SpiceDB past the moment it
// could have lost the lease, so every write of a job taken over lands (or is
// abandoned) before the job's replacement starts: the two runs are in
// sequence, as a job and its retry are.
//
// Local and database clocks never meet: the process measures its lease on its
// own monotonic clock from before it sent the renewal that Postgres stamped
// with now() + TTL, so its view always ends first; attempted_at and
// reclaimed_through are both Postgres timestamps.
type workerLease struct {
	db       *pgxpool.Pool // set when the client starts: a pool of its own
	clientID string
	host     string
	pid      int
	ttl      time.Duration
	logger   *slog.Logger

	mu sync.Mutex
	// writableUntil (local monotonic clock) bounds every SpiceDB write: the
	// send time of the last renewal + TTL - margin.
	writableUntil time.Time
	// reclaimedThrough (Postgres clock): jobs attempted at or before it may
	// have been taken over from this process.
	reclaimedThrough time.Time
	lapsed           bool // for logging the transitions only
}

func newWorkerLease(ttl time.Duration, logger *slog.Logger) *workerLease {
	host, _ := os.Hostname()
	host = strings.NewReplacer(".", "_", " ", "_").Replace(host)
	if host == "" {
		host = "unknown_host"
	}
	if len(host) > 60 {
		host = host[:60]
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	pid := os.Getpid()
	return &workerLease{
		ttl: ttl, logger: logger, host: host, pid: pid,
		// River's client id, and the lease's: unique per process start.
		clientID: fmt.Sprintf("%s_%d_%s", host, pid, hex.EncodeToString(b[:])),
	}
}

// margin is how long before the lease's end writes stop: room for a request
// in transit, or SpiceDB finishing a commit, after its deadline.
func (l *workerLease) margin() time.Duration { return l.ttl / 5 }

// interval is how often the lease is renewed (and dead workers looked for).
func (l *workerLease) interval() time.Duration { return l.ttl / 5 }

// renew takes or extends the lease and learns which jobs were taken over.
func (l *workerLease) renew(ctx context.Context) error {
	sent := time.Now()
	through, err := dbsqlc.New().WorkerLeaseRenew(ctx, l.db, &dbsqlc.WorkerLeaseRenewParams{
		ClientID: l.clientID, Host: l.host, Pid: int32(l.pid), TtlSeconds: l.ttl.Seconds(),
	})
	if err != nil {
		return fmt.Errorf("error renewing worker lease: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writableUntil = sent.Add(l.ttl - l.margin())
	if through.After(l.reclaimedThrough) {
		l.reclaimedThrough = through
	}
	if l.lapsed {
		l.lapsed = false
		l.logger.Info("worker lease renewed: SpiceDB writes resume", "client_id", l.clientID)
	}
	return nil
}

// keep renews the lease until ctx ends.
func (l *workerLease) keep(ctx context.Context) {
	ticker := time.NewTicker(l.interval())
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		renewCtx, cancel := context.WithTimeout(ctx, l.ttl/2)
		err := l.renew(renewCtx)
		cancel()
		if err == nil || ctx.Err() != nil {
			continue
		}
		l.mu.Lock()
		lapsedNow := !l.lapsed && !time.Now().Before(l.writableUntil)
		l.lapsed = l.lapsed || lapsedNow
		l.mu.Unlock()
		if lapsedNow {
			l.logger.Warn("worker lease lapsed: SpiceDB writes pause, and other workers may take this process's jobs over",
				"client_id", l.clientID, "error", err)
		}
	}
}

// writeContext bounds a SpiceDB write for a job attempted at attemptedAt:
// refused if the job may have been taken over or the lease may have lapsed,
// otherwise given a deadline no later than the lease's end.
func (l *workerLease) writeContext(ctx context.Context, attemptedAt time.Time) (context.Context, context.CancelFunc, error) {
	l.mu.Lock()
	until, through := l.writableUntil, l.reclaimedThrough
	l.mu.Unlock()
	switch {
	case until.IsZero():
		return nil, nil, fmt.Errorf("%w: never taken (start River with the start function NewClient returns)", ErrWorkerLeaseLost)
	case !attemptedAt.After(through):
		return nil, nil, fmt.Errorf("%w: the job was taken over by another worker", ErrWorkerLeaseLost)
	case !time.Now().Before(until):
		return nil, nil, fmt.Errorf("%w: not renewed in time", ErrWorkerLeaseLost)
	}
	ctx, cancel := context.WithDeadline(ctx, until)
	return ctx, cancel, nil
}

// jobLease is what the lease middleware puts in a job's context.
type jobLease struct {
	lease       *workerLease
	attemptedAt time.Time
}

type jobLeaseKey struct{}

// middleware hands each job the lease of the client running it.
func (l *workerLease) middleware() rivertype.Middleware {
	return river.WorkerMiddlewareFunc(func(ctx context.Context, job *rivertype.JobRow, doInner func(context.Context) error) error {
		var at time.Time // none: the write is refused as taken over, which is safe
		if job.AttemptedAt != nil {
			at = *job.AttemptedAt
		}
		return doInner(context.WithValue(ctx, jobLeaseKey{}, jobLease{lease: l, attemptedAt: at}))
	})
}

// leaseWriteContext is writeContext for the job running in ctx. A job run
// without a lease (outside a client made by NewClient) can never be taken
// over, so it writes unbounded as before.
func leaseWriteContext(ctx context.Context) (context.Context, context.CancelFunc, error) {
	jl, ok := ctx.Value(jobLeaseKey{}).(jobLease)
	if !ok {
		return ctx, func() {}, nil
	}
	return jl.lease.writeContext(ctx, jl.attemptedAt)
}
