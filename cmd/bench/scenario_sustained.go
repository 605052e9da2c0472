package main

import (
	"context"
	"fmt"
	"time"

	"github.com/tetherhq/tether/jobs"
)

// 4. Sustained throughput of the whole pipeline: HTTP → Postgres → River →
// SpiceDB, then drain and a dry-run reconcile.
func scenarioSustained(ctx context.Context, b *bench) ([]Metric, error) {
	d := 60 * time.Second
	e, err := b.engine(ctx, engineOpts{workers: true, http: true, maxWorkers: 200})
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.provider(ctx, "p"); err != nil {
		return nil, err
	}
	n := 240_000
	conns, err := e.bulkConnections(ctx, "p", "s", n, true)
	if err != nil {
		return nil, err
	}
	tokens := make([]string, len(conns))
	for i, c := range conns {
		tokens[i] = e.token(c.user, false)
	}
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
	report, err := e.reconciler.Run(ctx, jobs.ReconcileOpts{DryRun: true})
	if err != nil {
		return nil, err
	}
	e2e := float64(done) / total.Seconds()
	base := b.rawCeiling
	notes := []string{fmt.Sprintf("%d changes accepted in %s (%.0f req/s), all applied after %s; drift after drain: %d",
		done, took.Round(time.Millisecond), float64(done)/took.Seconds(), total.Round(time.Millisecond), report.Drift())}
	if base == 0 {
		notes = append(notes, "no baseline: scenario 1 measures it (BENCH_ONLY=1,4)")
	}
	return []Metric{
		{Name: "end-to-end changes applied per second (HTTP → SpiceDB, drained)", Value: e2e, Unit: "changes/s",
			Baseline: "raw pgx write ceiling (scenario 1)", BaselineValue: base, Ratio: ratio(e2e, base), Target: "≥ 3000/s", Pass: passIf(e2e >= 3000),
			Notes: notes},
		{Name: "drift after drain (reconcile --dry-run)", Value: float64(report.Drift()), Unit: "relationships",
			Baseline: "relationships checked", BaselineValue: float64(report.Checked), Target: "0", Pass: passIf(report.Drift() == 0)},
	}, nil
}
