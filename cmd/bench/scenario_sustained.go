package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

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
// ceiling), in interleaved rounds compared by their medians (one window per
// side let a neighbour's burst decide the ratio: 0.34–0.60× in three runs of
// one day), then latency at 10, 50 and 80 % of that capacity, against a lone
// SpiceDB write. The last round of each side prints what one change costs.
func scenarioSustained(ctx context.Context, b *bench) ([]Metric, error) {
	t := b.sustainedTimings()
	api, err := newDisconnecter(ctx, b, engineOpts{http: true}, "h", int(t.httpOnly.Seconds()*6000))
	if err != nil {
		return nil, err
	}
	defer api.e.close()
	// The first API-only round sizes the full pipeline's load: enough
	// connections for its rounds at that rate and the offered loads after.
	first, err := api.round(ctx, t.httpOnly/sustainedRounds, "")
	if err != nil {
		return nil, err
	}
	full, err := newDisconnecter(ctx, b, engineOpts{workers: true, http: true, maxWorkers: 200}, "s",
		int(first.rate*(t.capacity.Seconds()+1.5*t.offered.Seconds())*1.5)+1000)
	if err != nil {
		return nil, err
	}
	e := full.e
	defer e.close()
	lone, err := loneWrites(ctx, e, full.conns[len(full.conns)-300:])
	if err != nil {
		return nil, err
	}
	full.conns = full.conns[:len(full.conns)-300]

	rounds, err := targetOneRounds(ctx, t, api, full, first.rate)
	if err != nil {
		return nil, err
	}
	b.costs = append(b.costs, rounds.apiCost, rounds.fullCost)
	httpOnly, capacity := medianFloat(rounds.apiRates), medianFloat(rounds.fullRates)
	report, err := e.reconciler.Run(ctx, jobs.ReconcileOpts{DryRun: true})
	if err != nil {
		return nil, err
	}
	conns, tokens, done := full.conns, full.tokens, full.next

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

	notes := append([]string{fmt.Sprintf("medians of %d interleaved rounds: API only %.0f, full pipeline %.0f changes/s",
		sustainedRounds, rounds.apiRates, rounds.fullRates)}, rounds.fullNotes...)
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

// targetOne is target 1's rounds: each side's rates, the last rounds'
// costs, and how each full-pipeline round went.
type targetOne struct {
	apiRates, fullRates []float64
	apiCost, fullCost   *CostTable
	fullNotes           []string
}

// targetOneRounds runs sustainedRounds rounds of each side, the API alone
// and the full pipeline, alternating; the API's first round (firstAPI) ran
// already, to size the other side.
func targetOneRounds(ctx context.Context, t sustainedTimings, api, full *disconnecter, firstAPI float64) (targetOne, error) {
	out := targetOne{apiRates: []float64{firstAPI}}
	for r := range sustainedRounds {
		last := r == sustainedRounds-1
		if r > 0 {
			res, err := api.round(ctx, t.httpOnly/sustainedRounds, costPhase(last, "HTTP only, no workers (target 1's baseline)"))
			if err != nil {
				return out, err
			}
			out.apiRates, out.apiCost = append(out.apiRates, res.rate), res.cost
		}
		res, err := full.round(ctx, t.capacity/sustainedRounds, costPhase(last, "sustained, workers on (target 1's capacity phase, drained)"))
		if err != nil {
			return out, err
		}
		out.fullRates, out.fullCost = append(out.fullRates, res.rate), res.cost
		out.fullNotes = append(out.fullNotes, res.note)
	}
	return out, nil
}

// sustainedRounds is how many rounds each side of target 1 runs.
const sustainedRounds = 3

// disconnecter is an engine with connections to disconnect over HTTP, one
// after another across rounds.
type disconnecter struct {
	e      *engine
	conns  []conn
	tokens []string
	next   int
}

func newDisconnecter(ctx context.Context, b *bench, o engineOpts, prefix string, n int) (*disconnecter, error) {
	e, err := b.engine(ctx, o)
	if err != nil {
		return nil, err
	}
	if err := e.provider(ctx, "p"); err != nil {
		e.close()
		return nil, err
	}
	conns, err := e.bulkConnections(ctx, "p", prefix, n, o.workers)
	if err != nil {
		e.close()
		return nil, err
	}
	d := &disconnecter{e: e, conns: conns, tokens: make([]string, len(conns))}
	for i, c := range conns {
		d.tokens[i] = e.token(c.user, false)
	}
	return d, nil
}

// roundResult is one closed-loop round: its rate (accepted and, with
// workers, applied) and, if asked, its cost.
type roundResult struct {
	rate float64
	cost *CostTable
	note string
}

// costPhase names a round's cost table, or is empty for a round that is
// not costed.
func costPhase(costed bool, phase string) string {
	if !costed {
		return ""
	}
	return phase
}

// round disconnects from 32 clients for d (or until the connections run
// out) and, when the engine works jobs, until every change is applied: the
// rate counts to the last one applied. A named phase is costed, its jobs
// drained included (a handed-off change's job may still run).
func (d *disconnecter) round(ctx context.Context, dur time.Duration, phase string) (roundResult, error) {
	var probe *costProbe
	if phase != "" {
		var err error
		if probe, err = startCost(ctx, d.e); err != nil {
			return roundResult{}, err
		}
	}
	base := d.next
	if base >= len(d.conns) {
		return roundResult{}, fmt.Errorf("no connections left to disconnect")
	}
	start := time.Now()
	done, took, err := closedLoop(ctx, 32, dur, len(d.conns)-base, func(i int) error {
		return do(ctx, "DELETE", d.e.url+"/api/data/oauth2/connections/"+d.conns[base+i].id.String(), d.tokens[base+i], "", 204)
	})
	d.next += done
	if err != nil {
		return roundResult{}, err
	}
	if base+done == len(d.conns) {
		return roundResult{}, fmt.Errorf("ran out of connections (%d) before %s", len(d.conns), dur)
	}
	res := roundResult{rate: float64(done) / took.Seconds()}
	if d.e.opts.workers {
		if err := d.e.waitApplied(ctx, 10*time.Minute); err != nil {
			return roundResult{}, err
		}
		total := time.Since(start)
		res.rate = float64(done) / total.Seconds()
		res.note = fmt.Sprintf("%d changes accepted in %s (%.0f req/s), all applied after %s",
			done, took.Round(time.Millisecond), float64(done)/took.Seconds(), total.Round(time.Millisecond))
		if err := d.e.waitSynced(ctx, 10*time.Minute); err != nil {
			return roundResult{}, err
		}
	}
	if probe != nil {
		if res.cost, err = probe.finish(ctx, phase, done); err != nil {
			return roundResult{}, err
		}
	}
	return res, nil
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
	// secondP99s are the p99 of the changes committed in each second of
	// the offer, sorted: a few bad seconds (a stall) or all alike (queueing).
	secondP99s []time.Duration
	// background is what Postgres did meanwhile that stalls commits.
	background string
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
	t := newChangeTimes(n)
	before, err := readBackground(ctx, e)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	start := time.Now()
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		e.onApplied(jobs.KeyKindConnection, jobs.ConnectionKeyID("p", conns[i].user), func(_ string, at time.Time) { t.applied(i, at) })
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
			t.committed(i, time.Now())
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
	after, err := readBackground(ctx, e)
	if err != nil {
		return nil, err
	}
	l := &offeredLoad{rate: rate, offered: n, window: end.Sub(start), background: after.since(before)}
	if err := t.summarize(l, start, end); err != nil {
		return nil, err
	}
	return l, nil
}

// changeTimes are the commit and first application times of an offer's
// changes, and how many were applied again.
type changeTimes struct {
	mu            sync.Mutex
	commit, apply []time.Time
	again         int // changes applied a second time
	latestAgain   time.Duration
}

func newChangeTimes(n int) *changeTimes {
	return &changeTimes{commit: make([]time.Time, n), apply: make([]time.Time, n)}
}

func (t *changeTimes) committed(i int, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.commit[i] = at
}

// applied records change i's first application: when access changed. A
// later one (a job that ran although its hand-off applied the change)
// rewrites the same state, and is only counted.
func (t *changeTimes) applied(i int, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.apply[i].IsZero() {
		t.apply[i] = at
		return
	}
	t.again++
	t.latestAgain = max(t.latestAgain, at.Sub(t.apply[i]))
}

// summarize fills l's latencies and counts from the times of an offer
// that ran from start to end, every change drained.
func (t *changeTimes) summarize(l *offeredLoad, start, end time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	l.background += fmt.Sprintf("; changes applied a second time %d (the latest %s after the first)", t.again, t.latestAgain.Round(time.Millisecond))
	var last time.Time
	for i := range t.apply {
		if t.apply[i].IsZero() {
			return fmt.Errorf("change %d was drained but never reported applied", i)
		}
		l.latencies = append(l.latencies, max(0, t.apply[i].Sub(t.commit[i])))
		if !t.apply[i].After(end) {
			l.appliedInWindow++
		}
		if t.apply[i].After(last) {
			last = t.apply[i]
		}
	}
	l.drain = max(0, last.Sub(end))
	l.secondP99s = p99BySecond(start, t.commit, t.apply)
	slices.Sort(l.latencies)
	return nil
}

// p99BySecond is the p99 of commit → applied of the changes committed in
// each second after start, sorted.
func p99BySecond(start time.Time, committed, applied []time.Time) []time.Duration {
	bySecond := map[int][]time.Duration{}
	for i := range committed {
		sec := int(committed[i].Sub(start) / time.Second)
		bySecond[sec] = append(bySecond[sec], max(0, applied[i].Sub(committed[i])))
	}
	var out []time.Duration
	for _, ls := range bySecond {
		slices.Sort(ls)
		out = append(out, percentile(ls, 0.99))
	}
	slices.Sort(out)
	return out
}

// background counts what may stall changes besides the load: checkpoints,
// autovacuum and autoanalyze runs by table (both databases), and hand-offs
// that left their change to its job.
type background struct {
	checkpoints int64
	vacuums     map[string]int64
	handOffs    map[string]float64
}

func readBackground(ctx context.Context, e *engine) (background, error) {
	bg := background{vacuums: map[string]int64{}, handOffs: map[string]float64{}}
	for _, r := range []string{"applied", "left_to_job"} {
		bg.handOffs[r] = testutil.ToFloat64(e.tether.Metrics.HandOffs.WithLabelValues(r))
	}
	if err := e.db.QueryRow(ctx, "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter").Scan(&bg.checkpoints); err != nil {
		return bg, fmt.Errorf("error reading checkpoints: %w", err)
	}
	for _, db := range []struct{ label, url string }{{"", e.dbURL}, {"spicedb.", e.proc.dbURL}} {
		conn, err := pgx.Connect(ctx, db.url)
		if err != nil {
			return bg, err
		}
		rows, err := conn.Query(ctx, "SELECT relname, autovacuum_count + autoanalyze_count FROM pg_stat_user_tables")
		if err == nil {
			for rows.Next() {
				var name string
				var n int64
				if err = rows.Scan(&name, &n); err != nil {
					break
				}
				bg.vacuums[db.label+name] = n
			}
			rows.Close()
			err = cmp.Or(err, rows.Err())
		}
		conn.Close(ctx)
		if err != nil {
			return bg, fmt.Errorf("error reading autovacuum counts: %w", err)
		}
	}
	return bg, nil
}

// since describes what happened between b and bg.
func (bg background) since(b background) string {
	var parts []string
	for name, n := range bg.vacuums {
		if d := n - b.vacuums[name]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s ×%d", name, d))
		}
	}
	slices.Sort(parts)
	return fmt.Sprintf("%d checkpoints; autovacuum/autoanalyze runs: %s; hand-offs applied %.0f, left to their job %.0f",
		bg.checkpoints-b.checkpoints, cmp.Or(strings.Join(parts, ", "), "none"),
		bg.handOffs["applied"]-b.handOffs["applied"], bg.handOffs["left_to_job"]-b.handOffs["left_to_job"])
}

// latencyTargets are targets 2–4: latency at 50 and 80 % of capacity
// against the p50 at 10 %, and the p50 at 10 % against a lone SpiceDB
// write.
func latencyTargets(loads map[float64]*offeredLoad, lone []time.Duration) []Metric {
	low, mid, high := loads[0.1], loads[0.5], loads[0.8]
	p := func(l *offeredLoad, q float64) float64 { return ms(percentile(l.latencies, q)) }
	base := p(low, 0.5)
	note := func(l *offeredLoad) []string {
		return []string{fmt.Sprintf("%d/s offered for %s: %d changes, %d applied within the window (%.1f%%), the rest %s after; p50 %.2f, p90 %.2f, p99 %.2f ms; p99 by second of the offer: median %.1f, worst %.1f ms",
			l.rate, l.window.Round(time.Millisecond), l.offered, l.appliedInWindow, 100*float64(l.appliedInWindow)/float64(l.offered),
			l.drain.Round(time.Millisecond), p(l, 0.5), p(l, 0.9), p(l, 0.99),
			ms(percentile(l.secondP99s, 0.5)), ms(percentile(l.secondP99s, 1))), "meanwhile: " + l.background}
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
