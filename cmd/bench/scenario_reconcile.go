package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// 6. Reconcile at scale, as a separate `tether reconcile` process (so its
// peak RSS is its own): restore from an empty SpiceDB, then no drift, then 1%.
func scenarioReconcile(ctx context.Context, b *bench) ([]Metric, error) {
	users, pools := 100_000, 10_000
	if b.full {
		users = 1_000_000
	}
	e, err := b.engine(ctx, engineOpts{})
	if err != nil {
		return nil, err
	}
	defer e.close()
	const providers = 10
	if err := loadReconcileFixture(ctx, e, users, pools, providers); err != nil {
		return nil, err
	}
	var runs reconcileRuns
	if runs.restore, err = reconcile(ctx, e); err != nil {
		return nil, err
	}
	if err := e.analyze(ctx); err != nil { // as after any bulk restore (docs/operations.md)
		return nil, err
	}
	if runs.clean, err = reconcile(ctx, e, "--dry-run"); err != nil {
		return nil, err
	}
	// 1% drift: remove every hundredth connection relationship.
	var drift []spicedb.Update
	for i := 1; i <= users; i += 100 {
		drift = append(drift, spicedb.Update{Delete: true, Relationship: spicedb.Relationship{ResourceType: spicedb.TypeOAuth2Client,
			ResourceID: fmt.Sprintf("p%d", i%providers), Relation: spicedb.RelConnected, SubjectType: spicedb.TypeUser, SubjectID: fmt.Sprintf("user-%d", i)}})
	}
	if err := e.bulkWrite(ctx, drift); err != nil {
		return nil, err
	}
	if runs.repair, err = reconcile(ctx, e); err != nil {
		return nil, err
	}
	if runs.after, err = reconcile(ctx, e, "--dry-run"); err != nil {
		return nil, err
	}
	readBoth, err := readBothSides(ctx, e)
	if err != nil {
		return nil, err
	}
	var rels []spicedb.Relationship
	if err := e.spice.Export(ctx, func(page []spicedb.Relationship) error { rels = append(rels, page...); return nil }); err != nil {
		return nil, err
	}
	ownImport, err := spiceDBOwnImport(ctx, b, rels)
	if err != nil {
		return nil, err
	}
	ownCopy, err := postgresOwnCopy(ctx, b, rels)
	if err != nil {
		return nil, err
	}
	label := fmt.Sprintf("%dk connections, %dk pools", users/1000, pools/1000)
	restore := runs.restore.took.Seconds()
	return append(runs.metrics(label, len(drift), readBoth), Metric{
		Name: "restore from an empty SpiceDB, against SpiceDB's own import (" + label + ")", Value: restore, Unit: "s",
		Baseline: "the same relationships imported into an empty SpiceDB by a plain program (same pages, same concurrency)", BaselineValue: ownImport.Seconds(),
		Ratio: ratio(restore, ownImport.Seconds()),
		Notes: []string{"the floor of a restore through SpiceDB: what the datastore takes to write them, with nothing read or compared",
			fmt.Sprintf("SpiceDB's own import is %.2f× reading both sides", ownImport.Seconds()/readBoth.Seconds())},
	}, Metric{
		Name: "restore from an empty SpiceDB, against Postgres's own COPY into SpiceDB's table (" + label + ")", Value: restore, Unit: "s",
		Baseline: "the same rows COPYed straight into relation_tuple of an empty, migrated SpiceDB database, one stream per core, no SpiceDB", BaselineValue: ownCopy.Seconds(),
		Ratio: ratio(restore, ownCopy.Seconds()),
		Notes: []string{fmt.Sprintf("Postgres alone is %.2f× reading both sides: the table's indexes, not Tether or SpiceDB, set the floor", ownCopy.Seconds()/readBoth.Seconds())},
	}), nil
}

// loadReconcileFixture loads providers, pools linked to them round-robin
// and users connected to them straight into Postgres, and nothing into
// SpiceDB: the first reconcile restores it all.
func loadReconcileFixture(ctx context.Context, e *engine, users, pools, providers int) error {
	for p := range providers {
		if err := e.provider(ctx, fmt.Sprintf("p%d", p)); err != nil {
			return err
		}
	}
	if _, err := e.db.Exec(ctx, `INSERT INTO resource_pools (name, remote_provider_id)
		SELECT 'pool-' || g, 'p' || (g % $2) FROM generate_series(1, $1) g`, pools, providers); err != nil {
		return err
	}
	if _, err := e.db.Exec(ctx, `INSERT INTO oauth2_connections (user_id, provider_id, status)
		SELECT 'user-' || g, 'p' || (g % $2), 'connected' FROM generate_series(1, $1) g`, users, providers); err != nil {
		return err
	}
	for _, table := range []string{"oauth2_connections", "resource_pools"} {
		if _, err := e.db.Exec(ctx, "VACUUM ANALYZE "+table); err != nil {
			return err
		}
	}
	return nil
}

// reconcileRun is one `tether reconcile` process: how long it took, its
// peak RSS, its JSON report and its exit code (2: drift found).
type reconcileRun struct {
	took   time.Duration
	rssMB  float64
	report jobs.ReconcileReport
	code   int
}

// reconcile runs `tether reconcile --output json` with args on the bench
// engine's stores.
func reconcile(ctx context.Context, e *engine, args ...string) (reconcileRun, error) {
	cmd := exec.CommandContext(ctx, "bin/tether", append([]string{"reconcile", "--output", "json"}, args...)...)
	cmd.Env = append(os.Environ(), "TETHER_DATABASE_URL="+e.dbURL, "TETHER_SPICEDB_ENDPOINT="+e.proc.endpoint,
		"TETHER_SPICEDB_TOKEN="+e.proc.token, "TETHER_SPICEDB_INSECURE=true", "TETHER_LOG_LEVEL=warn")
	var stdout strings.Builder
	cmd.Stdout = &stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return reconcileRun{}, err
	}
	stopSampling := make(chan struct{})
	peak := peakRSS(cmd.Process.Pid, stopSampling)
	err := cmd.Wait()
	close(stopSampling)
	r := reconcileRun{took: time.Since(start), rssMB: <-peak}
	if cmd.ProcessState != nil {
		r.code = cmd.ProcessState.ExitCode()
	}
	if err != nil && r.code != 2 {
		return r, fmt.Errorf("tether reconcile %v: %w (%s)", args, err, stdout.String())
	}
	if jerr := json.Unmarshal([]byte(stdout.String()), &r.report); jerr != nil {
		return r, fmt.Errorf("reconcile output: %w", jerr)
	}
	return r, nil
}

// peakRSS samples a process's peak RSS, in MB, from its own VmHWM every
// 20 ms until stop is closed, then sends the highest seen. (The rusage of
// wait4 is no good here: Linux counts the parent's peak RSS at the fork
// into the child's, so it reported this process's size.)
func peakRSS(pid int, stop <-chan struct{}) <-chan float64 {
	peak := make(chan float64, 1)
	go func() {
		var hwm float64
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if kb, ok := vmHWM(pid); ok {
				hwm = max(hwm, kb/1024)
			}
			select {
			case <-stop:
				peak <- hwm
				return
			case <-t.C:
			}
		}
	}()
	return peak
}

// readBothSides is the baseline: only reading both sides — SpiceDB's
// export and Postgres's desired set — with nothing compared or written.
func readBothSides(ctx context.Context, e *engine) (time.Duration, error) {
	start := time.Now()
	var exported int
	if err := e.spice.Export(ctx, func(page []spicedb.Relationship) error { exported += len(page); return nil }); err != nil {
		return 0, err
	}
	var desired int
	if err := e.db.QueryRow(ctx, "SELECT count(*) FROM desired_relationships").Scan(&desired); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// spiceDBOwnImport is the restore's floor through SpiceDB: rels imported
// into a fresh, empty SpiceDB on its own database by a plain program —
// pages and concurrency as the reconciler's restore — timed from the first
// import to the last.
func spiceDBOwnImport(ctx context.Context, b *bench, rels []spicedb.Relationship) (time.Duration, error) {
	proc, err := b.spicedb(ctx)
	if err != nil {
		return 0, err
	}
	defer proc.stop()
	client, err := spicedb.New(proc.config())
	if err != nil {
		return 0, err
	}
	defer client.Close()
	if err := client.WriteSchema(ctx); err != nil {
		return 0, err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(jobs.RestoreImportWorkers)
	start := time.Now()
	for page := range slices.Chunk(rels, jobs.RestoreImportPageSize) {
		g.Go(func() error { return client.Import(gctx, page) })
	}
	if err := g.Wait(); err != nil {
		return 0, fmt.Errorf("SpiceDB's own import: %w", err)
	}
	return time.Since(start), nil
}

// reconcileRuns are scenario 6's four reconciles, in the order they run.
type reconcileRuns struct {
	restore reconcileRun // from an empty SpiceDB
	clean   reconcileRun // dry run, no drift
	repair  reconcileRun // after removing 1% of the connection relationships
	after   reconcileRun // dry run after the repair
}

// metrics compares each run with readBoth; removed is how many
// relationships the repair had to restore.
func (r reconcileRuns) metrics(label string, removed int, readBoth time.Duration) []Metric {
	restore, clean, repair, after := r.restore, r.clean, r.repair, r.after
	s := func(d time.Duration) float64 { return d.Seconds() }
	return []Metric{
		{Name: "reconcile, no drift (" + label + ")", Value: s(clean.took), Unit: "s", Baseline: "reading both sides only (export + desired count)",
			BaselineValue: s(readBoth), Ratio: ratio(s(clean.took), s(readBoth)), Target: "≤ 60 s and ≤ 2× the baseline",
			Pass:  passIf(s(clean.took) <= 60 && s(clean.took) <= 2*s(readBoth) && clean.code == 0 && clean.report.Drift() == 0),
			Notes: []string{fmt.Sprintf("checked %d, drift %d, exit %d", clean.report.Checked, clean.report.Drift(), clean.code)}},
		{Name: "reconcile, 1% drift (" + label + ")", Value: s(repair.took), Unit: "s", Baseline: "reading both sides only",
			BaselineValue: s(readBoth), Ratio: ratio(s(repair.took), s(readBoth)), Target: "≤ 60 s",
			Pass:  passIf(s(repair.took) <= 60 && repair.report.Repaired == int64(removed) && after.report.Drift() == 0),
			Notes: []string{fmt.Sprintf("repaired %d of %d removed; dry run after: drift %d", repair.report.Repaired, removed, after.report.Drift())}},
		{Name: "restore from an empty SpiceDB (" + label + ")", Value: s(restore.took), Unit: "s", Baseline: "reading both sides only",
			BaselineValue: s(readBoth), Ratio: ratio(s(restore.took), s(readBoth)), Target: "≤ 3× the baseline",
			Pass: passIf(s(restore.took) <= 3*s(readBoth) && restore.report.Repaired == restore.report.Desired),
			Notes: []string{fmt.Sprintf("repaired %d (%d by bulk import, %d pages fell back to TOUCH); phases %s",
				restore.report.Repaired, restore.report.Imported, restore.report.ImportFallbacks, phases(restore.report.PhaseSeconds))}},
		{Name: "peak RSS of the reconciling process, 1% drift", Value: repair.rssMB, Unit: "MB", Baseline: "peak RSS, no drift",
			BaselineValue: clean.rssMB, Ratio: ratio(repair.rssMB, clean.rssMB), Target: "≤ 300 MB", Pass: passIf(max(repair.rssMB, clean.rssMB, restore.rssMB) <= 300),
			Notes: []string{fmt.Sprintf("restore %.0f MB, no drift %.0f MB, 1%% drift %.0f MB", restore.rssMB, clean.rssMB, repair.rssMB)}},
	}
}

// phases renders a reconcile's time per phase.
func phases(p map[string]float64) string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s %.2fs, ", k, p[k])
	}
	return strings.TrimSuffix(b.String(), ", ")
}

// vmHWM reads a process's peak resident set size in KiB.
func vmHWM(pid int) (float64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb, err == nil
		}
	}
	return 0, false
}

// postgresOwnCopy is the floor beneath SpiceDB: rels COPYed straight into
// relation_tuple of a fresh database migrated by SpiceDB (its indexes, its
// defaults), split into one stream per core, timed from the first row to
// the last commit. No SpiceDB runs: what is left is Postgres maintaining
// the table's indexes.
func postgresOwnCopy(ctx context.Context, b *bench, rels []spicedb.Relationship) (time.Duration, error) {
	_, uri, err := b.spicedbDatabase(ctx)
	if err != nil {
		return 0, err
	}
	pool, err := pgxpool.New(ctx, uri)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	cols := []string{"namespace", "object_id", "relation", "userset_namespace", "userset_object_id", "userset_relation"}
	streams := runtime.NumCPU()
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	for part := range slices.Chunk(rels, (len(rels)+streams-1)/streams) {
		g.Go(func() error {
			rows := pgx.CopyFromSlice(len(part), func(i int) ([]any, error) {
				r := part[i]
				return []any{r.ResourceType, r.ResourceID, r.Relation, r.SubjectType, r.SubjectID, "..."}, nil // no subject relations in the schema
			})
			_, err := pool.CopyFrom(gctx, pgx.Identifier{"relation_tuple"}, cols, rows)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return 0, fmt.Errorf("Postgres's own COPY: %w", err)
	}
	return time.Since(start), nil
}
