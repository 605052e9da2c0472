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

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/jobs/spicedb"
	"github.com/tetherhq/tether/migrations"
)

// runStatus prints one screen for an operator: migrations, the queue, failing
// jobs, the oldest unapplied change and the last reconcile.
func runStatus(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	d, err := open(ctx, getenv, config.ScopeDatabase, false)
	if err != nil {
		return err
	}
	defer d.close()
	pool, spice := d.pool, d.spice
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	section := func(title string) { fmt.Fprintf(tw, "\n%s\n", strings.ToUpper(title)) }

	section("migrations")
	m, err := migrations.New(pool)
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
		}
		fmt.Fprintf(tw, "  %s\t%d/%d\t%s\n", c.Name, c.Current, c.Latest, state)
	}
	schema, err := spice.CheckSchema(ctx)
	if err != nil {
		fmt.Fprintf(tw, "  spicedb: schema\t\tunreachable: %s\n", spicedb.ScrubError(err))
	} else {
		fmt.Fprintf(tw, "  spicedb: schema\t\t%s\n", schema)
	}

	// River's tables are River's: read directly (an operator tool).
	section("jobs by state")
	rows, err := pool.Query(ctx, `SELECT kind, state::text, count(*) FROM river_job GROUP BY 1, 2 ORDER BY 1, 2`)
	if err != nil {
		return fmt.Errorf("error reading the queue: %w", err)
	}
	n := 0
	for rows.Next() {
		var kind, state string
		var count int64
		if err := rows.Scan(&kind, &state, &count); err != nil {
			return err
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d\n", kind, state, count)
		n++
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintln(tw, "  (no jobs)")
	}

	section("failing jobs (newest 10)")
	rows, err = pool.Query(ctx, `
		SELECT id, kind, state::text, attempt, COALESCE(errors[array_length(errors, 1)]->>'error', ''),
		       COALESCE(errors[array_length(errors, 1)]->>'at', '')
		FROM river_job
		WHERE state IN ('retryable', 'discarded', 'cancelled') OR (state = 'available' AND attempt > 0)
		ORDER BY id DESC LIMIT 10`)
	if err != nil {
		return fmt.Errorf("error reading failing jobs: %w", err)
	}
	n = 0
	for rows.Next() {
		var id int64
		var attempt int
		var kind, state, lastErr, at string
		if err := rows.Scan(&id, &kind, &state, &attempt, &lastErr, &at); err != nil {
			return err
		}
		if len(lastErr) > 120 {
			lastErr = lastErr[:120] + "…"
		}
		fmt.Fprintf(tw, "  #%d %s\t%s (attempt %d)\t%s\n", id, kind, state, attempt, lastErr)
		n++
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintln(tw, "  (none)")
	}

	section("sync")
	q := dbsqlc.New()
	pending, err := q.SyncOldestPending(ctx, pool)
	if err != nil {
		return fmt.Errorf("error reading sync state: %w", err)
	}
	fmt.Fprintf(tw, "  keys with unapplied changes\t%d\n", pending.PendingKeys)
	fmt.Fprintf(tw, "  oldest unapplied change\t%s\n", age(pending.OldestPendingAgeSeconds))
	fmt.Fprintf(tw, "  oldest unapplied revocation\t%s\n", age(pending.OldestRevokePendingAgeSeconds))
	fmt.Fprintf(tw, "  stalled keys (permanent errors)\t%d\n", pending.StalledKeys)

	section("last reconcile")
	run, err := q.ReconcileRunLatest(ctx, pool)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		fmt.Fprintln(tw, "  never run")
	case err != nil:
		return fmt.Errorf("error reading the last reconcile: %w", err)
	default:
		kind := "repair"
		if run.DryRun {
			kind = "dry run"
		}
		fmt.Fprintf(tw, "  finished\t%s ago (%s, took %s)\n", time.Since(run.FinishedAt).Round(time.Second), kind,
			run.FinishedAt.Sub(run.StartedAt).Round(time.Millisecond))
		fmt.Fprintf(tw, "  checked\t%d\n", run.Checked)
		fmt.Fprintf(tw, "  drift\t%d missing, %d extra\n", run.Missing, run.Extra)
		fmt.Fprintf(tw, "  repaired\t%d\n", run.Repaired)
		if run.Error != nil {
			fmt.Fprintf(tw, "  error\t%s\n", *run.Error)
		}
	}
	return tw.Flush()
}

func age(seconds float64) string {
	if seconds <= 0 {
		return "none"
	}
	return (time.Duration(seconds * float64(time.Second))).Round(time.Millisecond).String()
}
