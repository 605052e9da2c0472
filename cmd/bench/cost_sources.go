package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/pprof/profile"
	"github.com/jackc/pgx/v5"
)

// Where a cost table's figures come from: /proc for processes' CPU,
// Postgres's activity view for which backend serves whom, SpiceDB's
// metrics for its calls, a CPU profile for this process's goroutines.

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
