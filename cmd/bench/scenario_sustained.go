package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// sustainedTimings are scenario 4's phase lengths.
type sustainedTimings struct {
	httpOnly, capacity, offered time.Duration
}

func (b *bench) sustainedTimings() sustainedTimings {
	if b.full {
		return sustainedTimings{httpOnly: 30 * time.Second, capacity: 60 * time.Second, offered: 30 * time.Second}
	}
	return sustainedTimings{httpOnly: 15 * time.Second, capacity: 30 * time.Second, offered: 15 * time.Second}
}

// loadFractions are the offered loads of scenario 4, as fractions of the
// capacity it measured.
var loadFractions = []float64{0.1, 0.5, 0.8}

// 4. Sustained throughput of the whole pipeline, HTTP → Postgres → River →
// SpiceDB, against the same requests with no workers (the API's own
// ceiling), then latency at 10, 50 and 80 % of that capacity, against a
// lone SpiceDB write. Both loaded phases print what one change costs.
func scenarioSustained(ctx context.Context, b *bench) ([]Metric, error) {
	t := b.sustainedTimings()
	httpOnly, httpCost, err := sustainedHTTPOnly(ctx, b, t.httpOnly)
	if err != nil {
		return nil, err
	}
	b.costs = append(b.costs, httpCost)

	e, err := b.engine(ctx, engineOpts{workers: true, http: true, maxWorkers: 200})
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.provider(ctx, "p"); err != nil {
		return nil, err
	}
	// Enough connections for the capacity phase at the API's own rate and
	// the three offered loads after it.
	n := int(httpOnly*(t.capacity.Seconds()+1.5*t.offered.Seconds())*1.2) + 1000
	conns, err := e.bulkConnections(ctx, "p", "s", n, true)
	if err != nil {
		return nil, err
	}
	tokens := make([]string, len(conns))
	for i, c := range conns {
		tokens[i] = e.token(c.user, false)
	}
	lone, err := loneWrites(ctx, e, conns[len(conns)-300:])
	if err != nil {
		return nil, err
	}

	probe, err := startCost(ctx, e)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	done, took, err := closedLoop(ctx, 32, t.capacity, len(conns), func(i int) error {
		return do(ctx, "DELETE", e.url+"/api/data/oauth2/connections/"+conns[i].id.String(), tokens[i], "", 204)
	})
	if err != nil {
		return nil, err
	}
	if err := e.waitApplied(ctx, 10*time.Minute); err != nil {
		return nil, err
	}
	total := time.Since(start)
	// The cost includes the jobs that are left (a handed-off change's
	// job still runs, and finds its key applied).
	if err := e.waitSynced(ctx, 10*time.Minute); err != nil {
		return nil, err
	}
	capCost, err := probe.finish(ctx, "sustained, workers on (target 1's capacity phase, drained)", done)
	if err != nil {
		return nil, err
	}
	b.costs = append(b.costs, capCost)
	report, err := e.reconciler.Run(ctx, jobs.ReconcileOpts{DryRun: true})
	if err != nil {
		return nil, err
	}
	capacity := float64(done) / total.Seconds()

	loads := map[float64]*offeredLoad{}
	next := done
	for _, f := range loadFractions {
		rate := int(capacity * f)
		l, err := offerDisconnects(ctx, e, conns[next:], tokens[next:], rate, t.offered)
		if err != nil {
			return nil, fmt.Errorf("offered load %.0f%%: %w", f*100, err)
		}
		next += l.offered
		loads[f] = l
		b.addCDF("cdf-capacity", cdfSeries{label: fmt.Sprintf("%.0f%% of capacity (%d/s)", f*100, rate), values: l.latencies})
	}
	b.addCDF("cdf-capacity", cdfSeries{label: "lone SpiceDB write (c=1)", values: lone, dashed: true})
	after, err := e.reconciler.Run(ctx, jobs.ReconcileOpts{DryRun: true})
	if err != nil {
		return nil, err
	}

	notes := []string{fmt.Sprintf("%d changes accepted in %s (%.0f req/s), all applied after %s; drift after drain: %d",
		done, took.Round(time.Millisecond), float64(done)/took.Seconds(), total.Round(time.Millisecond), report.Drift())}
	out := []Metric{
		{Name: "target 1: end-to-end changes applied per second (HTTP → SpiceDB, drained)", Value: capacity, Unit: "changes/s",
			Baseline: "HTTP-only: the same disconnects, c=32, no workers, same run", BaselineValue: httpOnly,
			Ratio: ratio(capacity, httpOnly), Target: "≥ 0.7×", Pass: passIf(ratio(capacity, httpOnly) >= 0.7 && report.Drift() == 0),
			Notes: notes},
		{Name: "drift after drain (reconcile --dry-run)", Value: float64(report.Drift() + after.Drift()), Unit: "relationships",
			Baseline: "relationships checked", BaselineValue: float64(report.Checked), Target: "0", Pass: passIf(report.Drift()+after.Drift() == 0),
			Notes: []string{fmt.Sprintf("after the capacity phase %d, after the offered loads %d", report.Drift(), after.Drift())}},
	}
	return append(out, latencyTargets(loads, lone)...), nil
}

// sustainedHTTPOnly measures the API's own ceiling: the same disconnects,
// c=32, on an engine with no workers (their jobs wait in the table).
func sustainedHTTPOnly(ctx context.Context, b *bench, d time.Duration) (float64, *CostTable, error) {
	e, err := b.engine(ctx, engineOpts{http: true})
	if err != nil {
		return 0, nil, err
	}
	defer e.close()
	if err := e.provider(ctx, "p"); err != nil {
		return 0, nil, err
	}
	conns, err := e.bulkConnections(ctx, "p", "h", int(d.Seconds()*6000), false)
	if err != nil {
		return 0, nil, err
	}
	tokens := make([]string, len(conns))
	for i, c := range conns {
		tokens[i] = e.token(c.user, false)
	}
	probe, err := startCost(ctx, e)
	if err != nil {
		return 0, nil, err
	}
	done, took, err := closedLoop(ctx, 32, d, len(conns), func(i int) error {
		return do(ctx, "DELETE", e.url+"/api/data/oauth2/connections/"+conns[i].id.String(), tokens[i], "", 204)
	})
	if err != nil {
		return 0, nil, err
	}
	if done == len(conns) {
		return 0, nil, fmt.Errorf("HTTP-only phase ran out of connections (%d) before %s", done, d)
	}
	cost, err := probe.finish(ctx, "HTTP only, no workers (target 1's baseline)", done)
	return float64(done) / took.Seconds(), cost, err
}

// loneWrites times single-relationship SpiceDB writes one after another
// (c=1): a TOUCH of a relationship Postgres implies, through Tether's
// client (signed as Tether's own, so the watcher leaves it be).
func loneWrites(ctx context.Context, e *engine, conns []conn) ([]time.Duration, error) {
	out := make([]time.Duration, 0, len(conns))
	for _, c := range conns {
		u := spicedb.Update{Relationship: spicedb.Relationship{ResourceType: spicedb.TypeOAuth2Client, ResourceID: "p",
			Relation: spicedb.RelConnected, SubjectType: spicedb.TypeUser, SubjectID: spicedb.SubjectID(c.user)}}
		start := time.Now()
		if _, err := e.spice.Write(ctx, []spicedb.Update{u}); err != nil {
			return nil, fmt.Errorf("lone SpiceDB write: %w", err)
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out, nil
}

// offeredLoad is one open-loop phase: what was offered and how it fared.
type offeredLoad struct {
	rate      int
	offered   int
	window    time.Duration
	latencies []time.Duration // commit → applied, sorted
	// appliedInWindow counts changes applied before the offer ended;
	// drain is how long the rest took after it.
	appliedInWindow int
	drain           time.Duration
}

// offerDisconnects disconnects at rate a second for d (open loop: each
// request starts on its schedule, whether or not earlier ones finished),
// and records commit (the 204) → applied for each.
func offerDisconnects(ctx context.Context, e *engine, conns []conn, tokens []string, rate int, d time.Duration) (*offeredLoad, error) {
	interval := time.Second / time.Duration(max(rate, 1))
	n := int(d / interval)
	if n > len(conns) {
		return nil, fmt.Errorf("%d connections left, %d needed", len(conns), n)
	}
	committed, applied := make([]time.Time, n), make([]time.Time, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	start := time.Now()
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		e.onApplied(jobs.KeyKindConnection, jobs.ConnectionKeyID("p", conns[i].user), func(_ string, at time.Time) {
			mu.Lock()
			applied[i] = at
			mu.Unlock()
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := do(ctx, "DELETE", e.url+"/api/data/oauth2/connections/"+conns[i].id.String(), tokens[i], "", 204); err != nil {
				select {
				case errs <- err:
				default:
				}
				return
			}
			now := time.Now()
			mu.Lock()
			committed[i] = now
			mu.Unlock()
		}()
	}
	end := time.Now()
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	if err := e.waitSynced(ctx, 5*time.Minute); err != nil {
		return nil, err
	}
	l := &offeredLoad{rate: rate, offered: n, window: end.Sub(start), drain: time.Since(end)}
	mu.Lock()
	defer mu.Unlock()
	var last time.Time
	for i := range n {
		if applied[i].IsZero() {
			return nil, fmt.Errorf("change %d was drained but never reported applied", i)
		}
		l.latencies = append(l.latencies, max(0, applied[i].Sub(committed[i])))
		if !applied[i].After(end) {
			l.appliedInWindow++
		}
		if applied[i].After(last) {
			last = applied[i]
		}
	}
	l.drain = max(0, last.Sub(end))
	slices.Sort(l.latencies)
	return l, nil
}

// latencyTargets are targets 2–4: latency at 50 and 80 % of capacity
// against the p50 at 10 %, and the p50 at 10 % against a lone SpiceDB
// write.
func latencyTargets(loads map[float64]*offeredLoad, lone []time.Duration) []Metric {
	low, mid, high := loads[0.1], loads[0.5], loads[0.8]
	p := func(l *offeredLoad, q float64) float64 { return ms(percentile(l.latencies, q)) }
	base := p(low, 0.5)
	note := func(l *offeredLoad) []string {
		return []string{fmt.Sprintf("%d/s offered for %s: %d changes, %d applied within the window (%.1f%%), the rest %s after; p50 %.2f, p90 %.2f, p99 %.2f ms",
			l.rate, l.window.Round(time.Millisecond), l.offered, l.appliedInWindow, 100*float64(l.appliedInWindow)/float64(l.offered),
			l.drain.Round(time.Millisecond), p(l, 0.5), p(l, 0.9), p(l, 0.99))}
	}
	keepsUp := float64(high.appliedInWindow) / float64(high.offered)
	loneP50 := ms(percentile(lone, 0.5))
	return []Metric{
		{Name: "target 2: commit → applied p50 at 50% of capacity", Value: p(mid, 0.5), Unit: "ms", Baseline: "p50 at 10% of capacity",
			BaselineValue: base, Ratio: ratio(p(mid, 0.5), base), Target: "≤ 2×", Pass: passIf(p(mid, 0.5) <= 2*base), Notes: note(mid)},
		{Name: "target 2: commit → applied p99 at 50% of capacity", Value: p(mid, 0.99), Unit: "ms", Baseline: "p50 at 10% of capacity",
			BaselineValue: base, Ratio: ratio(p(mid, 0.99), base), Target: "≤ 5×", Pass: passIf(p(mid, 0.99) <= 5*base)},
		{Name: "target 3: commit → applied p99 at 80% of capacity", Value: p(high, 0.99), Unit: "ms", Baseline: "p50 at 10% of capacity",
			BaselineValue: base, Ratio: ratio(p(high, 0.99), base), Target: "≤ 20× and ≥ 95% applied within the offer",
			Pass: passIf(p(high, 0.99) <= 20*base && keepsUp >= 0.95), Notes: note(high)},
		{Name: "target 4: commit → applied p50 at 10% of capacity", Value: base, Unit: "ms", Baseline: "lone SpiceDB write p50 (1 relationship, c=1)",
			BaselineValue: loneP50, Ratio: ratio(base, loneP50), Target: "≤ 2.5×", Pass: passIf(base <= 2.5*loneP50),
			Notes: append(note(low), fmt.Sprintf("lone write p50 %.2f, p99 %.2f ms over %d writes", loneP50, ms(percentile(lone, 0.99)), len(lone)))},
	}
}
