package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime/pprof"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// CostTable is the cost of one change in a phase of a scenario: where the
// CPU went, which rows Postgres wrote, how many commits and WAL flushes it
// took, and how many SpiceDB calls. Every figure is per change.
type CostTable struct {
	Phase   string  `json:"phase"`
	Changes int     `json:"changes"`
	Seconds float64 `json:"seconds"`
	// CPU is core-milliseconds per change, by process (and, for this
	// process, by goroutine class from a CPU profile).
	CPU []CostCPU `json:"cpu_ms_per_change"`
	// Rows are Postgres row operations per change in Tether's database, by
	// table (River's included).
	Rows []CostRows `json:"rows_per_change"`
	// Commits are transactions committed per change, by database.
	Commits map[string]float64 `json:"commits_per_change"`
	// WAL is cluster-wide: records, bytes, and the flushes (fsyncs) that
	// made commits durable, per change.
	WAL CostWAL `json:"wal_per_change"`
	// SpiceDBCalls are gRPC calls SpiceDB answered, per change, by method.
	SpiceDBCalls map[string]float64 `json:"spicedb_calls_per_change"`
	Notes        []string           `json:"notes,omitempty"`
}

// CostCPU is one process (or goroutine class) and its CPU per change.
type CostCPU struct {
	Who   string  `json:"who"`
	MsPer float64 `json:"ms"`
}

// CostRows is one table's row operations per change.
type CostRows struct {
	Table   string  `json:"table"`
	Inserts float64 `json:"inserts"`
	Updates float64 `json:"updates"`
	HOT     float64 `json:"hot_updates"`
	Deletes float64 `json:"deletes"`
}

// CostWAL is WAL per change.
type CostWAL struct {
	Records float64 `json:"records"`
	Bytes   float64 `json:"bytes"`
	Flushes float64 `json:"flushes"`
}

// costSample is one reading of every counter a cost table is made from.
type costSample struct {
	at       time.Time
	selfCPU  time.Duration
	spiceCPU time.Duration
	pgCPU    map[string]time.Duration // by backend group
	pgTotal  time.Duration            // the whole cluster, exited processes included
	tables   map[string]CostRows      // cumulative counts
	commits  map[string]float64
	wal      CostWAL
	calls    map[string]float64
}

// costProbe measures one phase: start before it, finish after it drained.
type costProbe struct {
	e       *engine
	before  costSample
	profile bytes.Buffer
	// profiling is false when a CPU profile was already running
	// (BENCH_CPUPROFILE): the split by goroutine class is then left out.
	profiling bool
}

// Process groups of the cost table, in the order they print.
const (
	whoAPI      = "Tether: API path (HTTP, auth, service, its transaction)"
	whoWorkers  = "Tether: workers (River fetch/complete, syncer, batcher, SpiceDB client)"
	whoRuntime  = "Tether process: Go runtime (GC, scheduler)"
	whoOther    = "Tether process: other"
	whoLoad     = "load generator (bench HTTP client, same process)"
	whoPgTether = "Postgres: Tether's backends"
	whoPgSpice  = "Postgres: SpiceDB's backends"
	whoPgBack   = "Postgres: background (WAL writer, checkpointer, autovacuum, exited)"
	whoSpiceDB  = "SpiceDB server"
)

// startCost flushes pending statistics and takes the first reading.
func startCost(ctx context.Context, e *engine) (*costProbe, error) {
	p := &costProbe{e: e}
	s, err := p.sample(ctx, false)
	if err != nil {
		return nil, err
	}
	p.before = s
	p.profiling = pprof.StartCPUProfile(&p.profile) == nil
	return p, nil
}

// finish takes the second reading and turns the difference into a table
// for changes changes.
func (p *costProbe) finish(ctx context.Context, phase string, changes int) (*CostTable, error) {
	after, err := p.sample(ctx, true)
	if p.profiling {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return nil, err
	}
	b, n := p.before, float64(max(changes, 1))
	t := &CostTable{Phase: phase, Changes: changes, Seconds: after.at.Sub(b.at).Seconds(),
		Commits: map[string]float64{}, SpiceDBCalls: map[string]float64{}}
	perMs := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }

	self := after.selfCPU - b.selfCPU
	if shares, err := goroutineShares(&p.profile, p.profiling); err == nil {
		for _, who := range []string{whoAPI, whoWorkers, whoRuntime, whoOther, whoLoad} {
			t.CPU = append(t.CPU, CostCPU{who, perMs(time.Duration(float64(self) * shares[who]))})
		}
	} else {
		t.CPU = append(t.CPU, CostCPU{"Tether process (API, workers and load generator)", perMs(self)})
		t.Notes = append(t.Notes, "no split by goroutine class: "+err.Error())
	}
	pgLive := time.Duration(0)
	for _, who := range []string{whoPgTether, whoPgSpice} {
		d := after.pgCPU[who] - b.pgCPU[who]
		pgLive += d
		t.CPU = append(t.CPU, CostCPU{who, perMs(d)})
	}
	t.CPU = append(t.CPU, CostCPU{whoPgBack, perMs(after.pgTotal - b.pgTotal - pgLive)},
		CostCPU{whoSpiceDB, perMs(after.spiceCPU - b.spiceCPU)})

	for name, a := range after.tables {
		z := b.tables[name]
		r := CostRows{Table: name, Inserts: (a.Inserts - z.Inserts) / n, Updates: (a.Updates - z.Updates) / n,
			HOT: (a.HOT - z.HOT) / n, Deletes: (a.Deletes - z.Deletes) / n}
		if r.Inserts+r.Updates+r.Deletes > 0 {
			t.Rows = append(t.Rows, r)
		}
	}
	sort.Slice(t.Rows, func(i, j int) bool { return t.Rows[i].Table < t.Rows[j].Table })
	for db, c := range after.commits {
		t.Commits[db] = (c - b.commits[db]) / n
	}
	t.WAL = CostWAL{Records: (after.wal.Records - b.wal.Records) / n, Bytes: (after.wal.Bytes - b.wal.Bytes) / n,
		Flushes: (after.wal.Flushes - b.wal.Flushes) / n}
	for m, c := range after.calls {
		if d := c - b.calls[m]; d > 0 {
			t.SpiceDBCalls[m] = d / n
		}
	}
	t.Notes = append(t.Notes, "Postgres row and commit counters are read after the engine's pooled connections were closed "+
		"(a backend flushes its statistics when it exits); the few held connections (River's listener, the leases) flush every second")
	return t, nil
}

// sample reads every counter; last is the reading after the phase. Pooled
// connections are closed so that their backends flush their statistics (a
// busy backend flushes at most once a second, an idle one only after ten);
// the pool reconnects on use.
func (p *costProbe) sample(ctx context.Context, last bool) (costSample, error) {
	e := p.e
	s := costSample{pgCPU: map[string]time.Duration{}, tables: map[string]CostRows{}, commits: map[string]float64{}, calls: map[string]float64{}}
	admin, err := pgx.Connect(ctx, e.b.stack.AdminURL)
	if err != nil {
		return s, err
	}
	defer admin.Close(ctx)
	tetherDB, spiceDB := dbName(e.dbURL), dbName(e.proc.dbURL)
	// The live backends' CPU is read while they live: after the phase
	// before closing them (then their time is the reaped children's), and
	// before it once the pool's old ones are gone (or their time would
	// leave the group).
	if !last {
		if err := closePooled(ctx, e, admin); err != nil {
			return s, err
		}
	}
	s.at = time.Now()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return s, err
	}
	s.selfCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if e.proc.cmd != nil {
		s.spiceCPU, _ = procCPU(e.proc.cmd.Process.Pid, false)
	}
	if err := pgCPU(ctx, admin, tetherDB, spiceDB, &s); err != nil {
		return s, err
	}
	if last {
		if err := closePooled(ctx, e, admin); err != nil {
			return s, err
		}
	}

	rows, err := admin.Query(ctx, `SELECT datname, xact_commit FROM pg_stat_database WHERE datname = ANY($1)`, []string{tetherDB, spiceDB})
	if err != nil {
		return s, err
	}
	for rows.Next() {
		var db string
		var c int64
		if err := rows.Scan(&db, &c); err != nil {
			return s, err
		}
		s.commits[map[bool]string{true: "Tether", false: "SpiceDB"}[db == tetherDB]] = float64(c)
	}
	if err := rows.Err(); err != nil {
		return s, err
	}
	if err := admin.QueryRow(ctx, `SELECT wal_records, wal_bytes, wal_sync FROM pg_stat_wal`).Scan(&s.wal.Records, &s.wal.Bytes, &s.wal.Flushes); err != nil {
		return s, fmt.Errorf("error reading pg_stat_wal: %w", err)
	}
	rows, err = e.db.Query(ctx, `SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables`)
	if err != nil {
		return s, err
	}
	for rows.Next() {
		var name string
		var r CostRows
		if err := rows.Scan(&name, &r.Inserts, &r.Updates, &r.HOT, &r.Deletes); err != nil {
			return s, err
		}
		s.tables[name] = r
	}
	if err := rows.Err(); err != nil {
		return s, err
	}
	if e.proc.metricsAddr != "" {
		if s.calls, err = spiceDBCalls(ctx, e.proc.metricsAddr); err != nil {
			return s, err
		}
	}
	return s, nil
}

// closePooled closes the pool's idle connections and waits until their
// backends have exited, and so flushed their statistics. Connections the
// engine holds outside the pool (River's notifier, the leases) stay; they
// flush at least once a second while they work.
func closePooled(ctx context.Context, e *engine, admin *pgx.Conn) error {
	var pids []uint32
	for _, c := range e.db.AcquireAllIdle(ctx) {
		pids = append(pids, c.Conn().PgConn().PID())
		c.Release()
	}
	e.db.Reset()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left int
		if err := admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)`, pids).Scan(&left); err != nil {
			return err
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d closed connections' backends still there after 10 s", left)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// printCost writes a cost table as Markdown.
func printCost(w io.Writer, t *CostTable) {
	fmt.Fprintf(w, "\nCost of one change — %s (%d changes in %.1f s)\n\n", t.Phase, t.Changes, t.Seconds)
	fmt.Fprintln(w, "| CPU, by process | core-ms per change |\n| --- | --- |")
	var sum float64
	for _, c := range t.CPU {
		fmt.Fprintf(w, "| %s | %.3f |\n", c.Who, c.MsPer)
		if c.Who != whoLoad {
			sum += c.MsPer
		}
	}
	fmt.Fprintf(w, "| **all but the load generator** | **%.3f** |\n", sum)
	fmt.Fprintln(w, "\n| Tether's table | inserts | updates (HOT) | deletes |\n| --- | --- | --- | --- |")
	for _, r := range t.Rows {
		fmt.Fprintf(w, "| %s | %.2f | %.2f (%.2f) | %.2f |\n", r.Table, r.Inserts, r.Updates, r.HOT, r.Deletes)
	}
	fmt.Fprintf(w, "\ncommits per change: Tether %.2f, SpiceDB %.2f; WAL per change: %.1f records, %.0f bytes, %.3f flushes\n",
		t.Commits["Tether"], t.Commits["SpiceDB"], t.WAL.Records, t.WAL.Bytes, t.WAL.Flushes)
	methods := make([]string, 0, len(t.SpiceDBCalls))
	for m := range t.SpiceDBCalls {
		methods = append(methods, m)
	}
	sort.Strings(methods)
	var calls []string
	for _, m := range methods {
		calls = append(calls, fmt.Sprintf("%s %.4f", m, t.SpiceDBCalls[m]))
	}
	fmt.Fprintf(w, "SpiceDB calls per change: %s\n", strings.Join(calls, ", "))
	for _, n := range t.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
}
