package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/engine"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
	"github.com/tetherhq/tether/migrations"
)

// Exit codes of `tether status` besides 0 (everything answers and is
// current), 1 (an error while reading) and 78 (bad configuration). The
// README and docs/operations.md list them.
const (
	// exitDegraded: the report is printed, but something needs an operator:
	// SpiceDB is unreachable or lacks Tether's schema, or migrations are
	// behind. Everything Postgres knows is still shown.
	exitDegraded = 3
	// exitUnavailable (EX_UNAVAILABLE): Postgres cannot be reached, so there
	// is nothing to show.
	exitUnavailable = 69
)

// spiceDBCheckTimeout bounds the SpiceDB check: a SpiceDB that does not
// answer must not hold up the rest of the report.
const spiceDBCheckTimeout = 3 * time.Second

// statusReport writes the operator's screen, section by section, and
// collects what makes it degraded.
type statusReport struct {
	w        *tabwriter.Writer
	pool     *pgxpool.Pool
	spice    *spicedb.Client
	spiceErr error // SpiceDB did not answer
	schema   spicedb.SchemaState
	problems []string
}

func (r *statusReport) section(title string) { fmt.Fprintf(r.w, "\n%s\n", strings.ToUpper(title)) }

// runStatus prints one screen for an operator: the services, migrations,
// the queue, failing jobs, the oldest unapplied change and the last
// reconcile. Only Postgres is required: with SpiceDB down it shows the rest
// and exits exitDegraded.
func runStatus(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	d, err := open(ctx, getenv, config.ScopeDatabase, false, func(o *engine.Options) { o.CheckSpiceDB = false })
	if cfgErr := (*config.Error)(nil); errors.As(err, &cfgErr) && cfgErr.Unreachable {
		return &exitError{code: exitUnavailable, err: err}
	} else if err != nil {
		return err
	}
	defer d.close()
	r := &statusReport{w: tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0), pool: d.pool, spice: d.spice}
	r.services(ctx, d.cfg)
	for _, section := range []func(context.Context) error{r.migrations, r.queue, r.failingJobs, r.workers, r.sync, r.repairMode, r.lastReconcile} {
		if err := section(ctx); err != nil {
			return err
		}
	}
	r.section("overall")
	if len(r.problems) == 0 {
		fmt.Fprintln(r.w, "  ok")
		return r.w.Flush()
	}
	fmt.Fprintf(r.w, "  degraded: %s\n", strings.Join(r.problems, "; "))
	if err := r.w.Flush(); err != nil {
		return err
	}
	return &exitError{code: exitDegraded, err: fmt.Errorf("degraded: %s (exit %d)", strings.Join(r.problems, "; "), exitDegraded)}
}

// services says where Postgres and SpiceDB are and whether they answer.
func (r *statusReport) services(ctx context.Context, cfg *config.Config) {
	r.section("services")
	cc := r.pool.Config().ConnConfig
	fmt.Fprintf(r.w, "  postgres\tok\t%s:%d/%s\n", cc.Host, cc.Port, cc.Database)
	checkCtx, cancel := context.WithTimeout(ctx, spiceDBCheckTimeout)
	defer cancel()
	r.schema, r.spiceErr = r.spice.CheckSchema(checkCtx)
	switch {
	case r.spiceErr != nil:
		fmt.Fprintf(r.w, "  spicedb\tunreachable\t%s: %s\n", cfg.SpiceDBEndpoint, spicedb.ScrubError(r.spiceErr))
		fmt.Fprintln(r.w, "  \t\tthe rest is what Postgres knows; sync jobs retry until SpiceDB is back")
		r.problems = append(r.problems, "SpiceDB unreachable")
	case r.schema != spicedb.SchemaCurrent:
		fmt.Fprintf(r.w, "  spicedb\tschema %s\t%s: run tether reconcile (or tether migrate up)\n", r.schema, cfg.SpiceDBEndpoint)
		r.problems = append(r.problems, "SpiceDB schema "+r.schema.String())
	default:
		fmt.Fprintf(r.w, "  spicedb\tok\t%s\n", cfg.SpiceDBEndpoint)
	}
}

func (r *statusReport) migrations(ctx context.Context) error {
	r.section("migrations")
	m, err := migrations.New(r.pool)
	if err != nil {
		return err
	}
	defer m.Close()
	status, err := m.Status(ctx)
	if err != nil {
		return err
	}
	for _, c := range status {
		state := "up to date"
		if !c.UpToDate() {
			state = "behind: run tether migrate up"
			r.problems = append(r.problems, c.Name+" migrations behind")
		}
		fmt.Fprintf(r.w, "  %s\t%d/%d\t%s\n", c.Name, c.Current, c.Latest, state)
	}
	if r.spiceErr != nil {
		fmt.Fprintln(r.w, "  spicedb: schema\t\tunknown (SpiceDB unreachable)")
	} else {
		fmt.Fprintf(r.w, "  spicedb: schema\t\t%s\n", r.schema)
	}
	return nil
}

// queue counts River's jobs by kind and state. River's tables are River's:
// read directly (an operator tool).
func (r *statusReport) queue(ctx context.Context) error {
	r.section("jobs by state")
	rows, err := r.pool.Query(ctx, `SELECT kind, state::text, count(*) FROM river_job GROUP BY 1, 2 ORDER BY 1, 2`)
	if err != nil {
		return fmt.Errorf("error reading the queue: %w", err)
	}
	n := 0
	for rows.Next() {
		var kind, state string
		var count int64
		if err := rows.Scan(&kind, &state, &count); err != nil {
			return fmt.Errorf("error reading the queue: %w", err)
		}
		fmt.Fprintf(r.w, "  %s\t%s\t%d\n", kind, state, count)
		n++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("error reading the queue: %w", err)
	}
	if n == 0 {
		fmt.Fprintln(r.w, "  (no jobs)")
	}
	return nil
}

func (r *statusReport) failingJobs(ctx context.Context) error {
	r.section("failing jobs (newest 10)")
	rows, err := r.pool.Query(ctx, `
		SELECT id, kind, state::text, attempt, COALESCE(errors[array_length(errors, 1)]->>'error', '')
		FROM river_job
		WHERE state IN ('retryable', 'discarded', 'cancelled') OR (state = 'available' AND attempt > 0)
		ORDER BY id DESC LIMIT 10`)
	if err != nil {
		return fmt.Errorf("error reading failing jobs: %w", err)
	}
	n := 0
	for rows.Next() {
		var id int64
		var attempt int
		var kind, state, lastErr string
		if err := rows.Scan(&id, &kind, &state, &attempt, &lastErr); err != nil {
			return fmt.Errorf("error reading failing jobs: %w", err)
		}
		if len(lastErr) > 120 {
			lastErr = lastErr[:120] + "…"
		}
		fmt.Fprintf(r.w, "  #%d %s\t%s (attempt %d)\t%s\n", id, kind, state, attempt, lastErr)
		n++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("error reading failing jobs: %w", err)
	}
	if n == 0 {
		fmt.Fprintln(r.w, "  (none)")
	}
	return nil
}

func (r *statusReport) sync(ctx context.Context) error {
	r.section("sync")
	pending, err := dbsqlc.New().SyncOldestPending(ctx, r.pool)
	if err != nil {
		return fmt.Errorf("error reading sync state: %w", err)
	}
	fmt.Fprintf(r.w, "  keys with unapplied changes\t%d\n", pending.PendingKeys)
	fmt.Fprintf(r.w, "  oldest unapplied change\t%s\n", age(pending.OldestPendingAgeSeconds))
	fmt.Fprintf(r.w, "  oldest unapplied revocation\t%s\n", age(pending.OldestRevokePendingAgeSeconds))
	fmt.Fprintf(r.w, "  stalled keys (permanent errors)\t%d\n", pending.StalledKeys)
	return nil
}

func (r *statusReport) lastReconcile(ctx context.Context) error {
	r.section("last reconcile")
	run, err := dbsqlc.New().ReconcileRunLatest(ctx, r.pool)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		fmt.Fprintln(r.w, "  never run")
		return nil
	case err != nil:
		return fmt.Errorf("error reading the last reconcile: %w", err)
	}
	kind := "repair"
	if run.DryRun {
		kind = "dry run"
	}
	fmt.Fprintf(r.w, "  finished\t%s ago (%s, took %s)\n", time.Since(run.FinishedAt).Round(time.Second), kind,
		run.FinishedAt.Sub(run.StartedAt).Round(time.Millisecond))
	fmt.Fprintf(r.w, "  checked\t%d\n", run.Checked)
	fmt.Fprintf(r.w, "  drift\t%d missing, %d extra\n", run.Missing, run.Extra)
	fmt.Fprintf(r.w, "  repaired\t%d\n", run.Repaired)
	if run.Error != nil {
		fmt.Fprintf(r.w, "  error\t%s\n", *run.Error)
	}
	return nil
}

// workers lists the worker processes by their leases: live ones renew
// every fifth of TETHER_WORKER_LEASE_TTL; the running jobs of an expired one
// are taken over by the others.
func (r *statusReport) workers(ctx context.Context) error {
	r.section("workers (newest 10 leases)")
	rows, err := r.pool.Query(ctx, `
		SELECT l.host, l.pid, l.expires_at > now(), extract(epoch FROM now() - l.renewed_at)::float8,
		       (SELECT count(*) FROM river_job j
		        WHERE j.state = 'running' AND j.attempted_by[cardinality(j.attempted_by)] = l.client_id)
		FROM worker_leases l ORDER BY l.renewed_at DESC LIMIT 10`)
	if err != nil {
		return fmt.Errorf("error reading worker leases: %w", err)
	}
	n := 0
	for rows.Next() {
		var host string
		var pid, running int64
		var live bool
		var renewed float64
		if err := rows.Scan(&host, &pid, &live, &renewed, &running); err != nil {
			return fmt.Errorf("error reading worker leases: %w", err)
		}
		state := "live"
		if !live {
			state = "expired (its jobs are taken over)"
		}
		fmt.Fprintf(r.w, "  %s pid %d\t%s\trenewed %s ago, %d jobs running\n", host, pid, state, age(renewed), running)
		n++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("error reading worker leases: %w", err)
	}
	if n == 0 {
		fmt.Fprintln(r.w, "  (no worker has run)")
	}
	return nil
}

// repairMode says how foreign changes to SpiceDB are repaired right now, as
// the process holding the watch lease last recorded it.
func (r *statusReport) repairMode(ctx context.Context) error {
	r.section("spicedb repair")
	st, err := dbsqlc.New().WatchStateGet(ctx, r.pool)
	if err != nil {
		return fmt.Errorf("error reading the watcher's state: %w", err)
	}
	meaning := map[string]string{
		jobs.WatchModeWatch:        "watch: foreign changes are undone within seconds",
		jobs.WatchModePeriodic:     "periodic reconcile only: SpiceDB offers no Watch (on its Postgres datastore set track_commit_timestamp = on)",
		jobs.WatchModeReconnecting: "reconnecting: the watch stream broke",
		jobs.WatchModeStarting:     "starting: no watcher has run yet",
	}[st.Mode]
	fmt.Fprintf(r.w, "  mode\t%s (for %s)\n", meaning, time.Since(st.ModeSince).Round(time.Second))
	if st.ModeReason != nil {
		fmt.Fprintf(r.w, "  reason\t%s\n", *st.ModeReason)
	}
	if st.Holder != nil && st.HeartbeatAt != nil {
		beat := time.Since(*st.HeartbeatAt).Round(time.Second)
		note := ""
		if beat > 30*time.Second {
			note = " (stale: no process holds the watch lease; are the workers running?)"
		}
		fmt.Fprintf(r.w, "  watcher\t%s, last heartbeat %s ago%s\n", *st.Holder, beat, note)
	}
	if st.CursorAt != nil {
		fmt.Fprintf(r.w, "  last revision saved\t%s ago\n", time.Since(*st.CursorAt).Round(time.Second))
	}
	return nil
}

func age(seconds float64) string {
	if seconds <= 0 {
		return "none"
	}
	return (time.Duration(seconds * float64(time.Second))).Round(time.Millisecond).String()
}
