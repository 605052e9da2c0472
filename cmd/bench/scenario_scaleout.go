package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// 8. Scale-out: the same sustained load as scenario 4 (HTTP disconnects at
// concurrency 32, then drain) against one API (this process) with 1, 2 and
// 3 `tether serve --role worker` processes on the same Postgres and
// SpiceDB. On two cores no gain is expected: the point is what coordinating
// several processes costs (River's fetches and leader election, more
// connections, smaller group commits), as throughput relative to one worker
// process and as worker CPU per change.
func scenarioScaleOut(ctx context.Context, b *bench) ([]Metric, error) {
	d, n := 15*time.Second, 30_000
	if b.full {
		d, n = 60*time.Second, 120_000
	}
	e, err := b.engine(ctx, engineOpts{http: true})
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.provider(ctx, "p"); err != nil {
		return nil, err
	}
	// Two rounds per count, in the order 1 2 3 3 2 1: a neighbour's burst or
	// the growing tables then weigh on every count alike.
	rounds := map[int][]*scaleOutResult{}
	for round, workers := range []int{1, 2, 3, 3, 2, 1} {
		r, err := scaleOutRound(ctx, e, round, workers, d, n)
		if err != nil {
			return nil, err
		}
		rounds[workers] = append(rounds[workers], r)
	}
	one := meanRound(rounds[1])
	var metrics []Metric
	for workers := 1; workers <= 3; workers++ {
		r := meanRound(rounds[workers])
		var notes []string
		for _, x := range rounds[workers] {
			notes = append(notes, fmt.Sprintf("round: %.0f changes/s — %d changes accepted in %s, all applied after %s; workers used %.0f%% of a core each; API and load generator %.3f ms CPU per change",
				x.rate, x.changes, x.accepted.Round(time.Millisecond), x.total.Round(time.Millisecond), x.workerCores*100/float64(workers), x.apiCPUPerChange))
		}
		m := Metric{Name: fmt.Sprintf("end-to-end changes applied per second, %d worker process(es) (mean of 2)", workers), Value: r.rate, Unit: "changes/s",
			Baseline: "1 worker process, same run", BaselineValue: one.rate, Ratio: ratio(r.rate, one.rate), Notes: notes}
		if workers > 1 {
			m.Target, m.Pass = "≥ 0.9×", passIf(ratio(r.rate, one.rate) >= 0.9)
		}
		metrics = append(metrics, m, Metric{Name: fmt.Sprintf("worker CPU per change, %d worker process(es)", workers),
			Value: r.workerCPUPerChange, Unit: "ms", Baseline: "1 worker process, same run", BaselineValue: one.workerCPUPerChange,
			Ratio: ratio(r.workerCPUPerChange, one.workerCPUPerChange)})
	}
	return metrics, nil
}

// meanRound averages rounds' rates and CPU costs.
func meanRound(rs []*scaleOutResult) *scaleOutResult {
	out := &scaleOutResult{}
	for _, r := range rs {
		out.rate += r.rate / float64(len(rs))
		out.workerCPUPerChange += r.workerCPUPerChange / float64(len(rs))
		out.apiCPUPerChange += r.apiCPUPerChange / float64(len(rs))
	}
	return out
}

type scaleOutResult struct {
	changes                             int
	accepted, total                     time.Duration
	rate                                float64
	workerCPUPerChange, apiCPUPerChange float64 // ms
	workerCores                         float64 // worker CPU time over the round's wall time
}

// scaleOutRound loads n connected users, starts the worker processes,
// disconnects users over HTTP for d, waits until everything is applied and
// stops the workers with SIGTERM, as a rollout would.
func scaleOutRound(ctx context.Context, e *engine, round, workers int, d time.Duration, n int) (*scaleOutResult, error) {
	conns, err := e.bulkConnections(ctx, "p", fmt.Sprintf("r%d-", round), n, true)
	if err != nil {
		return nil, err
	}
	tokens := make([]string, len(conns))
	for i, c := range conns {
		tokens[i] = e.token(c.user, false)
	}
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}()
	for i := range workers {
		p, err := startWorkerProcess(ctx, e, fmt.Sprintf("%d-%d", round, i))
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
	}
	apiBefore := selfCPU()
	start := time.Now()
	done, took, err := closedLoop(ctx, 32, d, len(conns), func(i int) error {
		return do(ctx, "DELETE", e.url+"/api/data/oauth2/connections/"+conns[i].id.String(), tokens[i], "", 204)
	})
	if err != nil {
		return nil, err
	}
	if err := e.waitSynced(ctx, 10*time.Minute); err != nil {
		return nil, err
	}
	total := time.Since(start)
	apiCPU := selfCPU() - apiBefore
	var workerCPU time.Duration
	for _, p := range procs {
		workerCPU += processCPU(p.Process.Pid)
	}
	for _, p := range procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range procs {
		_ = p.Wait()
	}
	procs = nil
	return &scaleOutResult{changes: done, accepted: took, total: total, rate: float64(done) / total.Seconds(),
		workerCPUPerChange: ms(workerCPU) / float64(done), apiCPUPerChange: ms(apiCPU) / float64(done),
		workerCores: workerCPU.Seconds() / total.Seconds()}, nil
}

// startWorkerProcess runs bin/tether serve --role worker on e's stores and
// waits until it serves.
func startWorkerProcess(ctx context.Context, e *engine, name string) (*exec.Cmd, error) {
	cmd := exec.CommandContext(ctx, "bin/tether", "serve", "--role", "worker")
	sc := e.proc.config()
	cmd.Env = append(os.Environ(), "TETHER_DATABASE_URL="+e.dbURL, "TETHER_SPICEDB_ENDPOINT="+sc.Endpoint,
		"TETHER_SPICEDB_TOKEN="+sc.Token, "TETHER_SPICEDB_INSECURE=true", "TETHER_ENCRYPTION_KEYS="+e.b.keySpec,
		"TETHER_AUTH_HMAC_SECRET="+string(e.b.secret), "TETHER_HTTP_ADDR=127.0.0.1:0", "TETHER_RECONCILE_INTERVAL=0",
		"TETHER_LOG_LEVEL=info", fmt.Sprintf("TETHER_SPICEDB_WRITE_FLUSHERS=%d", flushers()))
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("error starting worker %s (make build first): %w", name, err)
	}
	serving := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var line struct {
				Msg string `json:"msg"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "tether serving" {
				serving <- nil
			}
		}
		serving <- fmt.Errorf("worker %s exited before serving", name)
	}()
	select {
	case err := <-serving:
		if err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return nil, err
		}
		return cmd, nil
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("worker %s did not serve within 30 s", name)
	}
}

// processCPU is a live process's user + system CPU time (/proc/PID/stat).
func processCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// selfCPU is this process's user + system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
