// Command bench measures Tether against baselines measured in the same run,
// on its own local stack (a throwaway Postgres, SpiceDB on its Postgres
// datastore, Tether in-process). It prints a Markdown table, writes the
// results as JSON to $BENCH_OUT (default bench-results.json) and a latency
// CDF plot beside it. BENCH_SCALE=full runs the big scenarios at the sizes
// of the targets; the default is sized to finish in under ten minutes on a
// two-core machine. BENCH_ONLY=2,5 runs some scenarios only.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"
)

// Metric is one measured figure with the baseline it is compared with.
type Metric struct {
	Name          string   `json:"name"`
	Value         float64  `json:"value"`
	Unit          string   `json:"unit"`
	Baseline      string   `json:"baseline"`
	BaselineValue float64  `json:"baseline_value"`
	Ratio         float64  `json:"ratio"`
	Target        string   `json:"target"`
	Pass          *bool    `json:"pass"`
	Notes         []string `json:"notes,omitempty"`
}

// Results is the JSON document bench writes.
type Results struct {
	Machine  map[string]any `json:"machine"`
	Scale    string         `json:"scale"`
	Started  time.Time      `json:"started"`
	Duration string         `json:"duration"`
	Metrics  []Metric       `json:"metrics"`
	// Costs are the cost tables of the loaded phases (scenario 4).
	Costs []*CostTable `json:"costs,omitempty"`
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		log.Fatalf("bench: %v", err)
	}
}

type scenario struct {
	id   string
	name string
	run  func(ctx context.Context, b *bench) ([]Metric, error)
}

// scenarios are all of them, in the order they run: 4 compares with the raw
// write ceiling that 1 measures.
var scenarios = []scenario{
	{"0", "SpiceDB's own write ceiling", scenarioSpiceDBCeiling},
	{"1", "write path vs the database's ceiling", scenarioWritePath},
	{"2", "time to consistency", scenarioConsistency},
	{"3", "flat in the number of pools", scenarioFlat},
	{"4", "sustained throughput", scenarioSustained},
	{"5", "relink at scale", scenarioRelink},
	{"6", "reconcile at scale", scenarioReconcile},
	{"7", "heal after outage", scenarioHeal},
	{"8", "scale-out: worker processes", scenarioScaleOut},
	{"9", "wipe under load", scenarioWipe},
}

func run(ctx context.Context) error {
	full := os.Getenv("BENCH_SCALE") == "full"
	out := os.Getenv("BENCH_OUT")
	if out == "" {
		out = "bench-results.json"
	}
	if path := os.Getenv("BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	b, err := newBench(ctx, full)
	if err != nil {
		return err
	}
	defer b.close()
	res := &Results{Machine: machineInfo(b), Scale: map[bool]string{true: "full", false: "default"}[full], Started: time.Now()}
	only := onlyScenarios(os.Getenv("BENCH_ONLY"))
	for _, sc := range scenarios {
		if len(only) > 0 && !only[sc.id] {
			continue
		}
		res.Metrics = append(res.Metrics, runScenario(ctx, b, sc)...)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	res.Duration = time.Since(res.Started).Round(time.Second).String()
	res.Costs = b.costs
	printTable(os.Stdout, res)
	for _, c := range res.Costs {
		printCost(os.Stdout, c)
	}
	return writeResults(out, res, b)
}

// onlyScenarios parses BENCH_ONLY, a comma-separated list of scenario ids;
// empty means all.
func onlyScenarios(list string) map[string]bool {
	only := map[string]bool{}
	for _, id := range strings.Split(list, ",") {
		if id = strings.TrimSpace(id); id != "" {
			only[id] = true
		}
	}
	return only
}

// runScenario runs one scenario and returns its metrics, named with its id.
// A failure becomes a failed metric: one broken scenario should not hide the
// others.
func runScenario(ctx context.Context, b *bench, sc scenario) []Metric {
	started := time.Now()
	log.Printf("scenario %s: %s", sc.id, sc.name)
	metrics, err := sc.run(ctx, b)
	if err != nil {
		log.Printf("scenario %s (%s) failed: %v", sc.id, sc.name, err)
		metrics = []Metric{{Name: sc.name + ": FAILED", Notes: []string{err.Error()}, Pass: passIf(false)}}
	}
	for i := range metrics {
		metrics[i].Name = sc.id + ". " + metrics[i].Name
	}
	log.Printf("scenario %s done in %s", sc.id, time.Since(started).Round(time.Second))
	return metrics
}

// writeResults writes res as indented JSON to out and, for each plot of
// latency CDFs the scenarios collected, an SVG beside it (out without
// .json, plus -cdf.svg or -cdf-capacity.svg).
func writeResults(out string, res *Results, b *bench) error {
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	written := []string{out}
	for _, name := range b.cdfOrder {
		plot := strings.TrimSuffix(out, ".json") + "-" + name + ".svg"
		if err := os.WriteFile(plot, renderCDF(cdfTitles[name], b.cdfs[name]), 0o644); err != nil {
			return err
		}
		written = append(written, plot)
	}
	fmt.Printf("\nwrote %s\n", strings.Join(written, ", "))
	return nil
}

func printTable(w *os.File, res *Results) {
	fmt.Fprintf(w, "\nMachine: %v CPUs, %v, Go %v, scale %s, total %s\n\n", res.Machine["cpus"], res.Machine["cpu_model"], res.Machine["go"], res.Scale, res.Duration)
	fmt.Fprintln(w, "| metric | value | baseline | baseline value | ratio | target | pass |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- |")
	for _, m := range res.Metrics {
		pass := "–"
		if m.Pass != nil {
			pass = map[bool]string{true: "yes", false: "**no**"}[*m.Pass]
		}
		fmt.Fprintf(w, "| %s | %s %s | %s | %s | %.2f× | %s | %s |\n", m.Name, fmtNum(m.Value), m.Unit, m.Baseline, fmtNum(m.BaselineValue), m.Ratio, m.Target, pass)
	}
}

func fmtNum(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func machineInfo(b *bench) map[string]any {
	m := map[string]any{"cpus": runtime.NumCPU(), "go": runtime.Version(), "os": runtime.GOOS + "/" + runtime.GOARCH}
	if cpu, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(cpu), "\n") {
			if strings.HasPrefix(line, "model name") {
				m["cpu_model"] = strings.TrimSpace(strings.SplitN(line, ":", 2)[1])
				break
			}
		}
	}
	if mem, err := os.ReadFile("/proc/meminfo"); err == nil {
		m["memory"] = strings.TrimSpace(strings.TrimPrefix(strings.SplitN(string(mem), "\n", 2)[0], "MemTotal:"))
	}
	m["postgres"] = b.postgresVersion
	m["spicedb"] = "v1.56.2 (postgres datastore)"
	return m
}

func ratio(v, base float64) float64 {
	if base == 0 {
		return 0
	}
	return v / base
}

func passIf(ok bool) *bool { return &ok }
