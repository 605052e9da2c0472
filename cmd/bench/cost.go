package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/pprof/profile"
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

// pgCPU reads the CPU of every Postgres process: live backends by group,
// and the whole cluster (the postmaster's own and its reaped children's
// time count the processes that exited, autovacuum workers among them).
func pgCPU(ctx context.Context, admin *pgx.Conn, tetherDB, spiceDB string, s *costSample) error {
	rows, err := admin.Query(ctx, `SELECT pid, COALESCE(datname, ''), backend_type FROM pg_stat_activity`)
	if err != nil {
		return err
	}
	type backend struct {
		pid      int
		db, kind string
	}
	var backends []backend
	for rows.Next() {
		var b backend
		if err := rows.Scan(&b.pid, &b.db, &b.kind); err != nil {
			return err
		}
		backends = append(backends, b)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	var postmaster int
	for _, b := range backends {
		cpu, ok := procCPU(b.pid, false)
		if !ok {
			continue
		}
		if postmaster == 0 {
			postmaster = procParent(b.pid)
		}
		switch {
		case b.kind == "client backend" && b.db == tetherDB:
			s.pgCPU[whoPgTether] += cpu
		case b.kind == "client backend" && b.db == spiceDB:
			s.pgCPU[whoPgSpice] += cpu
		}
	}
	if postmaster == 0 {
		return fmt.Errorf("postmaster not found")
	}
	total, _ := procCPU(postmaster, true)
	for _, pid := range procChildren(postmaster) {
		cpu, _ := procCPU(pid, false)
		total += cpu
	}
	s.pgTotal = total
	return nil
}

// clockTick is Linux's USER_HZ, the unit of /proc/<pid>/stat's times.
const clockTick = 10 * time.Millisecond

// procStat returns the fields of /proc/<pid>/stat after the command name.
func procStat(pid int) ([]string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, false
	}
	return strings.Fields(string(b[i+1:])), true
}

// procCPU is a process's user+system time; withChildren adds its reaped
// children's.
func procCPU(pid int, withChildren bool) (time.Duration, bool) {
	f, ok := procStat(pid)
	if !ok || len(f) < 15 {
		return 0, false
	}
	fields := []int{11, 12} // utime, stime (fields 14, 15 of stat)
	if withChildren {
		fields = append(fields, 13, 14) // cutime, cstime
	}
	var ticks int64
	for _, i := range fields {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * clockTick, true
}

func procParent(pid int) int {
	f, ok := procStat(pid)
	if !ok {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

func procChildren(parent int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, en := range entries {
		pid, err := strconv.Atoi(en.Name())
		if err == nil && procParent(pid) == parent {
			out = append(out, pid)
		}
	}
	return out
}

// dbName is the database a connection URL names.
func dbName(url string) string {
	rest := url[strings.LastIndex(url, "/")+1:]
	name, _, _ := strings.Cut(rest, "?")
	return name
}

// spiceDBCalls scrapes SpiceDB's handled-calls counter, summed by method.
func spiceDBCalls(ctx context.Context, addr string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("error scraping SpiceDB's metrics: %w", err)
	}
	defer resp.Body.Close()
	return parseHandledCalls(resp.Body)
}

// parseHandledCalls sums grpc_server_handled_total by grpc_method from a
// Prometheus text exposition.
func parseHandledCalls(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		labels, ok := strings.CutPrefix(line, "grpc_server_handled_total{")
		if !ok {
			continue
		}
		end := strings.LastIndexByte(labels, '}')
		if end < 0 {
			continue
		}
		_, m, found := strings.Cut(labels[:end], `grpc_method="`)
		if !found {
			continue
		}
		method, _, _ := strings.Cut(m, `"`)
		v, err := strconv.ParseFloat(strings.TrimSpace(labels[end+1:]), 64)
		if err != nil {
			return nil, fmt.Errorf("SpiceDB metric line %q: %w", line, err)
		}
		out[method] += v
	}
	return out, sc.Err()
}

// goroutineShares splits this process's CPU profile by what each sample's
// goroutine was doing, as fractions of all samples.
func goroutineShares(buf *bytes.Buffer, profiled bool) (map[string]float64, error) {
	if !profiled {
		return nil, fmt.Errorf("a CPU profile was already running (BENCH_CPUPROFILE)")
	}
	prof, err := profile.Parse(buf)
	if err != nil {
		return nil, fmt.Errorf("error parsing the CPU profile: %w", err)
	}
	counts := map[string]float64{}
	var total float64
	for _, s := range prof.Sample {
		v := float64(s.Value[0])
		counts[goroutineClass(s)] += v
		total += v
	}
	if total == 0 {
		return nil, fmt.Errorf("the CPU profile holds no samples")
	}
	for k := range counts {
		counts[k] /= total
	}
	return counts, nil
}

// goroutineClass names what a profile sample's goroutine was for, by the
// frames on its stack: the first rule that matches wins (an API handler
// inserts River jobs, so the API rule comes before the workers').
func goroutineClass(s *profile.Sample) string {
	var funcs []string
	for _, loc := range s.Location {
		for _, line := range loc.Line {
			if line.Function != nil {
				funcs = append(funcs, line.Function.Name)
			}
		}
	}
	has := func(parts ...string) bool {
		return slices.ContainsFunc(funcs, func(f string) bool {
			return slices.ContainsFunc(parts, func(p string) bool { return strings.Contains(f, p) })
		})
	}
	switch {
	case has("net/http.(*conn).serve", "tetherhq/tether/app."):
		return whoAPI
	case has("net/http.(*persistConn)", "net/http.(*Client)", "main.closedLoop", "main.openLoop", "main.do"):
		return whoLoad
	case has("riverqueue/river", "tetherhq/tether/jobs", "google.golang.org/grpc"):
		return whoWorkers
	case has("runtime.gcBgMarkWorker", "runtime.bgsweep", "runtime.bgscavenge", "runtime.mcall", "runtime.morestack", "runtime.sysmon", "runtime.findRunnable"):
		return whoRuntime
	}
	return whoOther
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
