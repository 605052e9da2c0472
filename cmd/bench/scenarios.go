package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// 1. The write path against the database's own ceiling: HTTP disconnects
// (one transaction: delete the row, mark the key changed, InsertTx its job)
// against a raw pgx program running the same statements in one transaction.
func scenarioWritePath(ctx context.Context, b *bench) ([]Metric, error) {
	e, err := b.engine(ctx, engineOpts{http: true})
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.provider(ctx, "p"); err != nil {
		return nil, err
	}
	// Interleaved rounds, alternating which side goes first, compared by
	// their medians: on a shared machine one 5 s window per side let a
	// neighbour's burst decide the ratio.
	const rounds, perRun = 5, 6_000
	conns, err := e.bulkConnections(ctx, "p", "w", 2*2*rounds*perRun, false)
	if err != nil {
		return nil, err
	}
	tokens := make(map[string]string, len(conns))
	for _, c := range conns {
		tokens[c.user] = e.token(c.user, false)
	}
	chunks := slices.Collect(slices.Chunk(conns, perRun))
	const d = 2 * time.Second
	tether := func(c int, batch []conn) (float64, error) {
		n, took, err := closedLoop(ctx, c, d, len(batch), func(i int) error {
			return do(ctx, "DELETE", e.url+"/api/data/oauth2/connections/"+batch[i].id.String(), tokens[batch[i].user], "", 204)
		})
		return float64(n) / took.Seconds(), err
	}
	raw := func(c int, batch []conn) (float64, error) {
		n, took, err := closedLoop(ctx, c, d, len(batch), func(i int) error {
			tx, err := e.db.Begin(ctx)
			if err != nil {
				return err
			}
			defer tx.Rollback(ctx)
			var provider string
			if err := tx.QueryRow(ctx, "DELETE FROM oauth2_connections WHERE id = $1 AND user_id = $2 RETURNING provider_id",
				batch[i].id, batch[i].user).Scan(&provider); err != nil {
				return err
			}
			key := jobs.ConnectionKeyID(provider, batch[i].user)
			if _, err := tx.Exec(ctx, `INSERT INTO sync_state (kind, key_id, provider_id, user_id, generation, changed_at, pending_since, revoke_pending_since)
				VALUES ('connection', $1, $2, $3, nextval('sync_generation_seq'), clock_timestamp(), now(), now())
				ON CONFLICT (kind, key_id) DO UPDATE SET generation = EXCLUDED.generation, changed_at = clock_timestamp(),
				pending_since = COALESCE(sync_state.pending_since, now()), revoke_pending_since = COALESCE(sync_state.revoke_pending_since, now())`,
				key, provider, batch[i].user); err != nil {
				return err
			}
			if _, err := e.river.InsertTx(ctx, tx, jobs.SyncConnectionArgs{ProviderID: provider, UserID: batch[i].user}, nil); err != nil {
				return err
			}
			return tx.Commit(ctx)
		})
		return float64(n) / took.Seconds(), err
	}
	var out []Metric
	for i, c := range []int{8, 32} {
		var ts, rs []float64
		for round := range rounds {
			tetherChunk, rawChunk := chunks[(i*rounds+round)*2], chunks[(i*rounds+round)*2+1]
			var t, r float64
			var err1, err2 error
			if round%2 == 0 {
				r, err1 = raw(c, rawChunk)
				t, err2 = tether(c, tetherChunk)
			} else {
				t, err2 = tether(c, tetherChunk)
				r, err1 = raw(c, rawChunk)
			}
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("raw: %v, tether: %v", err1, err2)
			}
			ts, rs = append(ts, t), append(rs, r)
		}
		t, r := medianFloat(ts), medianFloat(rs)
		b.rawCeiling = max(b.rawCeiling, r)
		out = append(out, Metric{Name: fmt.Sprintf("HTTP disconnect throughput, concurrency %d", c), Value: t, Unit: "req/s",
			Baseline: "raw pgx tx: same statements + InsertTx", BaselineValue: r, Ratio: ratio(t, r), Target: "≥ 0.7×", Pass: passIf(ratio(t, r) >= 0.7),
			Notes: []string{fmt.Sprintf("medians of %d interleaved %s rounds; Tether %.0f, raw %.0f req/s", rounds, d, ts, rs)}})
	}
	return out, nil
}

// applyTimes records when a key's change committed and when it was applied.
type applyTimes struct {
	mu        sync.Mutex
	committed map[string]time.Time
	applied   map[string]time.Time
	checked   map[string]time.Time
	// pickup is River's commit → Work() part (p50, p99 in ms), from the
	// jobs' created_at and attempted_at.
	pickup [2]float64
}

func newApplyTimes() *applyTimes {
	return &applyTimes{committed: map[string]time.Time{}, applied: map[string]time.Time{}, checked: map[string]time.Time{}}
}

func (a *applyTimes) latencies(which map[string]time.Time) []time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]time.Duration, 0, len(which))
	for k, t := range which {
		if c, ok := a.committed[k]; ok {
			out = append(out, max(0, t.Sub(c)))
		}
	}
	slices.Sort(out)
	return out
}

// openLoad makes rate connects a second for d, each a new key, and records
// commit, apply and check times.
func openLoad(ctx context.Context, e *engine, provider string, poolID int64, prefix string, rate int, d time.Duration) (*applyTimes, error) {
	a := newApplyTimes()
	interval := time.Second / time.Duration(rate)
	n := int(d / interval)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	start := time.Now()
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		user := fmt.Sprintf("%s%d", prefix, i)
		keyID := jobs.ConnectionKeyID(provider, user)
		e.onApplied(jobs.KeyKindConnection, keyID, func(token string, writtenAt time.Time) {
			a.mu.Lock()
			a.applied[keyID] = writtenAt
			a.mu.Unlock()
			// One change in ten is also checked: a check per change would
			// double SpiceDB's load and measure the checks, not the sync.
			if i%10 != 0 {
				return
			}
			go func() {
				if canView(ctx, e.spice, user, poolID, token) {
					a.mu.Lock()
					a.checked[keyID] = time.Now()
					a.mu.Unlock()
				}
			}()
		})
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.svc.ConnectionSetStatus(ctx, user, provider, "connected")
			now := time.Now()
			if err != nil {
				errMu.Lock()
				firstErr = err
				errMu.Unlock()
				return
			}
			a.mu.Lock()
			a.committed[keyID] = now
			a.mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := e.waitSynced(ctx, 2*time.Minute); err != nil {
		return nil, err
	}
	time.Sleep(200 * time.Millisecond) // let the last checks land
	if err := e.db.QueryRow(ctx, `SELECT COALESCE(percentile_cont(0.5) WITHIN GROUP (ORDER BY d), 0), COALESCE(percentile_cont(0.99) WITHIN GROUP (ORDER BY d), 0)
		FROM (SELECT extract(epoch FROM attempted_at - created_at) * 1000 AS d FROM river_job
		      WHERE kind = 'tether.sync_connection' AND args->>'user_id' LIKE $1 || '%') j`, prefix).Scan(&a.pickup[0], &a.pickup[1]); err != nil {
		return nil, fmt.Errorf("error reading pickup latencies: %w", err)
	}
	return a, nil
}

func canView(ctx context.Context, spice *spicedb.Client, user string, poolID int64, token string) bool {
	consistency := &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}}
	if token != "" {
		consistency = &v1.Consistency{Requirement: &v1.Consistency_AtLeastAsFresh{AtLeastAsFresh: &v1.ZedToken{Token: token}}}
	}
	resp, err := spice.Authzed().CheckPermission(ctx, &v1.CheckPermissionRequest{
		Consistency: consistency,
		Resource:    &v1.ObjectReference{ObjectType: spicedb.TypeResourcePool, ObjectId: fmt.Sprint(poolID)},
		Permission:  spicedb.PermissionView,
		Subject:     &v1.SubjectReference{Object: &v1.ObjectReference{ObjectType: spicedb.TypeUser, ObjectId: spicedb.SubjectID(user)}},
	})
	return err == nil && resp.GetPermissionship() == v1.CheckPermissionResponse_PERMISSIONSHIP_HAS_PERMISSION
}

// 2. Time to consistency: commit → SpiceDB write acknowledged, and → a
// CheckPermission at the write's ZedToken says so, at three loads. Baseline:
// the same pipeline with River's default fetch settings and no group commit.
func scenarioConsistency(ctx context.Context, b *bench) ([]Metric, error) {
	d := 10 * time.Second
	if b.full {
		d = 30 * time.Second
	}
	measure := func(o engineOpts, rates []int, label string) (map[int]*applyTimes, error) {
		e, err := b.engine(ctx, o)
		if err != nil {
			return nil, err
		}
		defer e.close()
		if err := e.provider(ctx, "p"); err != nil {
			return nil, err
		}
		pool := "pool"
		remote := app.Optional[app.Remote]{Set: true, Value: &app.Remote{ProviderID: "p"}}
		p, err := e.svc.PoolCreate(ctx, &app.PoolInput{Name: &pool, Remote: remote})
		if err != nil {
			return nil, err
		}
		if err := e.waitSynced(ctx, time.Minute); err != nil {
			return nil, err
		}
		out := map[int]*applyTimes{}
		for _, rate := range rates {
			a, err := openLoad(ctx, e, "p", p.ID, fmt.Sprintf("%s%d-", label, rate), rate, d)
			if err != nil {
				return nil, err
			}
			out[rate] = a
		}
		return out, nil
	}
	base, err := measure(engineOpts{workers: true, riverDefaults: true}, []int{200}, "base")
	if err != nil {
		return nil, err
	}
	tuned, err := measure(engineOpts{workers: true}, []int{50, 200, 1000}, "tuned")
	if err != nil {
		return nil, err
	}
	baseApplied := base[200].latencies(base[200].applied)
	var out []Metric
	for _, rate := range []int{50, 200, 1000} {
		a := tuned[rate]
		applied, checked := a.latencies(a.applied), a.latencies(a.checked)
		b.cdfs = append(b.cdfs, cdfSeries{label: fmt.Sprintf("%d changes/s", rate), values: applied})
		for _, p := range []struct {
			name   string
			q      float64
			target float64
		}{{"p50", 0.5, 5}, {"p99", 0.99, 25}} {
			v, bv := ms(percentile(applied, p.q)), ms(percentile(baseApplied, p.q))
			m := Metric{Name: fmt.Sprintf("commit → applied %s at %d/s", p.name, rate), Value: v, Unit: "ms",
				Baseline: "River defaults, no group commit, 200/s", BaselineValue: bv, Ratio: ratio(v, bv)}
			if rate == 200 {
				m.Target = fmt.Sprintf("≤ %.0f ms", p.target)
				m.Pass = passIf(v <= p.target)
			}
			m.Notes = []string{fmt.Sprintf("%d changes, %d applied; River pickup (InsertTx → Work) p50 %.1f ms, p99 %.1f ms", len(a.committed), len(applied), a.pickup[0], a.pickup[1])}
			out = append(out, m)
		}
		cv := ms(percentile(checked, 0.5))
		out = append(out, Metric{Name: fmt.Sprintf("commit → CheckPermission(ZedToken) says so, p50 at %d/s", rate), Value: cv, Unit: "ms",
			Baseline: "commit → applied p50, same run", BaselineValue: ms(percentile(applied, 0.5)), Ratio: ratio(cv, ms(percentile(applied, 0.5))),
			Notes: []string{fmt.Sprintf("%d of %d checks saw the grant at the write's ZedToken", len(checked), len(applied))}})
	}
	b.cdfs = append(b.cdfs, cdfSeries{label: "baseline 200/s (River defaults)", values: baseApplied, dashed: true})
	return out, nil
}

// 3. Flat in the number of pools: a disconnect when the provider links 1 to
// 10,000 pools, against the incumbent's way (a synchronous SpiceDB write per
// linked pool inside the request, fan-out schema).
func scenarioFlat(ctx context.Context, b *bench) ([]Metric, error) {
	e, err := b.engine(ctx, engineOpts{workers: true, http: true})
	if err != nil {
		return nil, err
	}
	defer e.close()
	sizes := []int{1, 100, 1000, 10000}
	tetherReq, tetherApplied, baseline := map[int]time.Duration{}, map[int]time.Duration{}, map[int]time.Duration{}
	for _, size := range sizes {
		provider := fmt.Sprintf("f%d", size)
		if err := e.provider(ctx, provider); err != nil {
			return nil, err
		}
		pools, err := e.bulkPools(ctx, provider, size)
		if err != nil {
			return nil, err
		}
		conns, err := e.bulkConnections(ctx, provider, provider+"-u", 25, true)
		if err != nil {
			return nil, err
		}
		var reqs, applieds []time.Duration
		for _, c := range conns[:20] {
			applied := make(chan time.Time, 1)
			e.onApplied(jobs.KeyKindConnection, jobs.ConnectionKeyID(provider, c.user), func(_ string, at time.Time) { applied <- at })
			start := time.Now()
			if err := do(ctx, "DELETE", e.url+"/api/data/oauth2/connections/"+c.id.String(), e.token(c.user, false), "", 204); err != nil {
				return nil, err
			}
			done := time.Now()
			select {
			case at := <-applied:
				reqs, applieds = append(reqs, done.Sub(start)), append(applieds, at.Sub(done))
			case <-time.After(30 * time.Second):
				return nil, fmt.Errorf("disconnect not applied")
			}
		}
		tetherReq[size], tetherApplied[size] = median(reqs), median(applieds)

		// The incumbent: delete the row, then one SpiceDB write per pool,
		// synchronously, before answering.
		runs := map[bool]int{true: 1, false: 3}[size >= 10000]
		var base []time.Duration
		for _, c := range conns[20 : 20+runs] {
			start := time.Now()
			if _, err := e.db.Exec(ctx, "DELETE FROM oauth2_connections WHERE id = $1", c.id); err != nil {
				return nil, err
			}
			for _, pool := range pools {
				if _, err := e.spice.Write(ctx, []spicedb.Update{{Delete: true, Relationship: spicedb.Relationship{ResourceType: spicedb.TypeResourcePool,
					ResourceID: fmt.Sprint(pool), Relation: spicedb.RelViewer, SubjectType: spicedb.TypeUser, SubjectID: spicedb.SubjectID(c.user)}}}); err != nil {
					return nil, err
				}
			}
			base = append(base, time.Since(start))
		}
		baseline[size] = median(base)
	}
	var out []Metric
	for _, size := range sizes {
		out = append(out, Metric{Name: fmt.Sprintf("disconnect request latency, %d linked pools", size), Value: ms(tetherReq[size]), Unit: "ms",
			Baseline: "incumbent: 1 synchronous SpiceDB write per pool", BaselineValue: ms(baseline[size]), Ratio: ratio(ms(tetherReq[size]), ms(baseline[size])),
			Notes: []string{fmt.Sprintf("commit → applied p50 %.2f ms", ms(tetherApplied[size]))}})
	}
	flat := ratio(ms(tetherReq[10000]), ms(tetherReq[1]))
	out = append(out, Metric{Name: "disconnect latency 10,000 pools ÷ 1 pool", Value: flat, Unit: "×",
		Baseline: "incumbent's 10,000 ÷ 1", BaselineValue: ratio(ms(baseline[10000]), ms(baseline[1])), Ratio: flat / max(ratio(ms(baseline[10000]), ms(baseline[1])), 1e-9),
		Target: "≤ 1.2×", Pass: passIf(flat <= 1.2)})
	appliedFlat := ratio(ms(tetherApplied[10000]), ms(tetherApplied[1]))
	out = append(out, Metric{Name: "commit → applied 10,000 pools ÷ 1 pool", Value: appliedFlat, Unit: "×",
		Baseline: "incumbent's 10,000 ÷ 1", BaselineValue: ratio(ms(baseline[10000]), ms(baseline[1])), Ratio: appliedFlat / max(ratio(ms(baseline[10000]), ms(baseline[1])), 1e-9)})
	return out, nil
}

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

// 5. Relink a pool with 100,000 connected users to another provider: one
// relationship changes.
func scenarioRelink(ctx context.Context, b *bench) ([]Metric, error) {
	const users = 100_000
	e, err := b.engine(ctx, engineOpts{workers: true, http: true})
	if err != nil {
		return nil, err
	}
	defer e.close()
	for _, p := range []string{"a", "b"} {
		if err := e.provider(ctx, p); err != nil {
			return nil, err
		}
	}
	conns, err := e.bulkConnections(ctx, "a", "r", users, true)
	if err != nil {
		return nil, err
	}
	name := "big"
	pool, err := e.svc.PoolCreate(ctx, &app.PoolInput{Name: &name, Remote: app.Optional[app.Remote]{Set: true, Value: &app.Remote{ProviderID: "a"}}})
	if err != nil {
		return nil, err
	}
	if err := e.waitSynced(ctx, time.Minute); err != nil {
		return nil, err
	}
	admin := e.token("admin", true)
	var lat []time.Duration
	for i := range 6 {
		target := []string{"b", "a"}[i%2]
		applied := make(chan time.Time, 1)
		e.onApplied(jobs.KeyKindPool, fmt.Sprint(pool.ID), func(_ string, at time.Time) { applied <- at })
		if err := do(ctx, "PATCH", fmt.Sprintf("%s/api/data/resource_pools/%d", e.url, pool.ID), admin,
			`{"remote": {"provider_id": "`+target+`"}}`, 200); err != nil {
			return nil, err
		}
		committed := time.Now()
		select {
		case at := <-applied:
			lat = append(lat, at.Sub(committed))
		case <-time.After(30 * time.Second):
			return nil, fmt.Errorf("relink not applied")
		}
	}
	// After an even number of relinks the pool is back on "a": its users see it.
	if !canView(ctx, e.spice, conns[0].user, pool.ID, "") {
		return nil, fmt.Errorf("after relinking back, a user of provider a cannot view the pool")
	}
	// The incumbent's relink: revoke every old user's fan-out viewer tuple and
	// grant the new provider's users — here 100,000 deletes, generously in
	// 1,000-update calls.
	start := time.Now()
	updates := make([]spicedb.Update, len(conns))
	for i, c := range conns {
		updates[i] = spicedb.Update{Delete: true, Relationship: spicedb.Relationship{ResourceType: spicedb.TypeResourcePool, ResourceID: fmt.Sprint(pool.ID),
			Relation: spicedb.RelViewer, SubjectType: spicedb.TypeUser, SubjectID: spicedb.SubjectID(c.user)}}
	}
	for chunk := range slices.Chunk(updates, spicedb.MaxUpdatesPerWrite) {
		if _, err := e.spice.Write(ctx, chunk); err != nil {
			return nil, err
		}
	}
	base := time.Since(start)
	v := ms(median(lat))
	return []Metric{{Name: "relink of a pool with 100,000 connected users: commit → applied (median of 6)", Value: v, Unit: "ms",
		Baseline: "fan-out relink: 100,000 viewer deletes in 1,000-update calls", BaselineValue: ms(base), Ratio: ratio(v, ms(base)),
		Target: "≤ 50 ms", Pass: passIf(v <= 50)}}, nil
}

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
	for p := range providers {
		if err := e.provider(ctx, fmt.Sprintf("p%d", p)); err != nil {
			return nil, err
		}
	}
	if _, err := e.db.Exec(ctx, `INSERT INTO resource_pools (name, remote_provider_id)
		SELECT 'pool-' || g, 'p' || (g % $2) FROM generate_series(1, $1) g`, pools, providers); err != nil {
		return nil, err
	}
	if _, err := e.db.Exec(ctx, `INSERT INTO oauth2_connections (user_id, provider_id, status)
		SELECT 'user-' || g, 'p' || (g % $2), 'connected' FROM generate_series(1, $1) g`, users, providers); err != nil {
		return nil, err
	}
	for _, table := range []string{"oauth2_connections", "resource_pools"} {
		if _, err := e.db.Exec(ctx, "VACUUM ANALYZE "+table); err != nil {
			return nil, err
		}
	}
	type run struct {
		took   time.Duration
		rssMB  float64
		report jobs.ReconcileReport
		code   int
	}
	reconcile := func(args ...string) (run, error) {
		cmd := exec.CommandContext(ctx, "bin/tether", append([]string{"reconcile", "--output", "json"}, args...)...)
		cmd.Env = append(os.Environ(), "TETHER_DATABASE_URL="+e.dbURL, "TETHER_SPICEDB_ENDPOINT="+e.proc.endpoint,
			"TETHER_SPICEDB_TOKEN="+e.proc.token, "TETHER_SPICEDB_INSECURE=true", "TETHER_LOG_LEVEL=warn")
		var stdout strings.Builder
		cmd.Stdout = &stdout
		start := time.Now()
		if err := cmd.Start(); err != nil {
			return run{}, err
		}
		// Peak RSS from the child's own VmHWM, sampled while it runs. (The
		// rusage of wait4 is no good here: Linux counts the parent's peak
		// RSS at the fork into the child's, so it reported this process's
		// size.)
		peak := make(chan float64, 1)
		stopSampling := make(chan struct{})
		go func() {
			var hwm float64
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				if kb, ok := vmHWM(cmd.Process.Pid); ok {
					hwm = max(hwm, kb/1024)
				}
				select {
				case <-stopSampling:
					peak <- hwm
					return
				case <-t.C:
				}
			}
		}()
		err := cmd.Wait()
		close(stopSampling)
		r := run{took: time.Since(start), rssMB: <-peak}
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
	restore, err := reconcile()
	if err != nil {
		return nil, err
	}
	if err := e.analyze(ctx); err != nil { // as after any bulk restore (docs/operations.md)
		return nil, err
	}
	clean, err := reconcile("--dry-run")
	if err != nil {
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
	repair, err := reconcile()
	if err != nil {
		return nil, err
	}
	after, err := reconcile("--dry-run")
	if err != nil {
		return nil, err
	}
	// Baseline: only reading both sides — SpiceDB's export and Postgres's
	// desired set — with nothing compared or written.
	start := time.Now()
	var exported int
	if err := e.spice.Export(ctx, func(page []spicedb.Relationship) error { exported += len(page); return nil }); err != nil {
		return nil, err
	}
	var desired int
	if err := e.db.QueryRow(ctx, "SELECT count(*) FROM desired_relationships").Scan(&desired); err != nil {
		return nil, err
	}
	readBoth := time.Since(start)
	label := fmt.Sprintf("%dk connections, %dk pools", users/1000, pools/1000)
	s := func(d time.Duration) float64 { return d.Seconds() }
	return []Metric{
		{Name: "reconcile, no drift (" + label + ")", Value: s(clean.took), Unit: "s", Baseline: "reading both sides only (export + desired count)",
			BaselineValue: s(readBoth), Ratio: ratio(s(clean.took), s(readBoth)), Target: "≤ 60 s", Pass: passIf(s(clean.took) <= 60 && clean.code == 0 && clean.report.Drift() == 0),
			Notes: []string{fmt.Sprintf("checked %d, drift %d, exit %d", clean.report.Checked, clean.report.Drift(), clean.code)}},
		{Name: "reconcile, 1% drift (" + label + ")", Value: s(repair.took), Unit: "s", Baseline: "reading both sides only",
			BaselineValue: s(readBoth), Ratio: ratio(s(repair.took), s(readBoth)), Target: "≤ 60 s",
			Pass:  passIf(s(repair.took) <= 60 && repair.report.Repaired == int64(len(drift)) && after.report.Drift() == 0),
			Notes: []string{fmt.Sprintf("repaired %d of %d removed; dry run after: drift %d", repair.report.Repaired, len(drift), after.report.Drift())}},
		{Name: "restore from an empty SpiceDB (" + label + ")", Value: s(restore.took), Unit: "s", Baseline: "reading both sides only",
			BaselineValue: s(readBoth), Ratio: ratio(s(restore.took), s(readBoth)), Notes: []string{fmt.Sprintf("repaired %d", restore.report.Repaired)}},
		{Name: "peak RSS of the reconciling process, 1% drift", Value: repair.rssMB, Unit: "MB", Baseline: "peak RSS, no drift",
			BaselineValue: clean.rssMB, Ratio: ratio(repair.rssMB, clean.rssMB), Target: "≤ 300 MB", Pass: passIf(max(repair.rssMB, clean.rssMB, restore.rssMB) <= 300),
			Notes: []string{fmt.Sprintf("restore %.0f MB, no drift %.0f MB, 1%% drift %.0f MB", restore.rssMB, clean.rssMB, repair.rssMB)}},
	}, nil
}

// 7. Heal after an outage: SpiceDB down while changes keep coming; time from
// its return until every change is applied. Baseline: the same backlog
// drained by workers started with SpiceDB up.
func scenarioHeal(ctx context.Context, b *bench) ([]Metric, error) {
	outage := 30 * time.Second
	if b.full {
		outage = 60 * time.Second
	}
	const rate = 100
	changes := func(e *engine, prefix string) (int, error) {
		n := int(outage.Seconds()) * rate
		interval := time.Second / rate
		start := time.Now()
		var wg sync.WaitGroup
		var errs sync.Map
		for i := range n {
			if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
				time.Sleep(wait)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := e.svc.ConnectionSetStatus(ctx, fmt.Sprintf("%s%d", prefix, i), "p", "connected"); err != nil {
					errs.Store(i, err)
				}
			}()
		}
		wg.Wait()
		failed := 0
		errs.Range(func(any, any) bool { failed++; return true })
		if failed > 0 {
			return n, fmt.Errorf("%d of %d changes failed while SpiceDB was down", failed, n)
		}
		return n, nil
	}
	e, err := b.engine(ctx, engineOpts{workers: true})
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.provider(ctx, "p"); err != nil {
		return nil, err
	}
	e.proc.stop()
	n, err := changes(e, "h")
	if err != nil {
		return nil, err
	}
	if err := e.proc.start(); err != nil {
		return nil, err
	}
	back := time.Now()
	if err := e.waitSynced(ctx, 5*time.Minute); err != nil {
		return nil, err
	}
	heal := time.Since(back)

	// Baseline: the same backlog queued with no worker running, then drained.
	q, err := b.engine(ctx, engineOpts{})
	if err != nil {
		return nil, err
	}
	defer q.close()
	if err := q.provider(ctx, "p"); err != nil {
		return nil, err
	}
	for i := range n {
		if _, err := q.svc.ConnectionSetStatus(ctx, fmt.Sprintf("h%d", i), "p", "connected"); err != nil {
			return nil, err
		}
	}
	if err := q.startWorkers(ctx); err != nil {
		return nil, err
	}
	started := time.Now()
	if err := q.waitSynced(ctx, 5*time.Minute); err != nil {
		return nil, err
	}
	drain := time.Since(started)
	return []Metric{{Name: fmt.Sprintf("heal after a %s SpiceDB outage (%d changes queued): return → all applied", outage, n),
		Value: heal.Seconds(), Unit: "s", Baseline: "draining the same backlog with SpiceDB up", BaselineValue: drain.Seconds(),
		Ratio: ratio(heal.Seconds(), drain.Seconds()), Target: "≤ 15 s", Pass: passIf(heal <= 15*time.Second)}}, nil
}

// 0. SpiceDB's own write ceiling on this machine: single-relationship
// TOUCHes from 8 goroutines, and 1,000-update calls. Later scenarios use it
// as the limit the pipeline works against.
func scenarioSpiceDBCeiling(ctx context.Context, b *bench) ([]Metric, error) {
	e, err := b.engine(ctx, engineOpts{})
	if err != nil {
		return nil, err
	}
	defer e.close()
	const d = 5 * time.Second
	n, took, err := closedLoop(ctx, 8, d, 1<<30, func(i int) error {
		_, err := e.spice.Write(ctx, []spicedb.Update{{Relationship: spicedb.Relationship{ResourceType: spicedb.TypeOAuth2Client, ResourceID: "p",
			Relation: spicedb.RelConnected, SubjectType: spicedb.TypeUser, SubjectID: fmt.Sprintf("c%d", i)}}})
		return err
	})
	if err != nil {
		return nil, err
	}
	single := float64(n) / took.Seconds()
	batches, took2, err := closedLoop(ctx, 2, d, 1<<30, func(i int) error {
		updates := make([]spicedb.Update, spicedb.MaxUpdatesPerWrite)
		for j := range updates {
			updates[j] = spicedb.Update{Relationship: spicedb.Relationship{ResourceType: spicedb.TypeOAuth2Client, ResourceID: "q",
				Relation: spicedb.RelConnected, SubjectType: spicedb.TypeUser, SubjectID: fmt.Sprintf("b%d-%d", i, j)}}
		}
		_, err := e.spice.Write(ctx, updates)
		return err
	})
	if err != nil {
		return nil, err
	}
	batched := float64(batches*spicedb.MaxUpdatesPerWrite) / took2.Seconds()
	b.spiceSingle, b.spiceBatched = single, batched
	return []Metric{
		{Name: "SpiceDB single-update writes/s (8 concurrent calls)", Value: single, Unit: "updates/s", Baseline: "1,000-update calls (2 concurrent)",
			BaselineValue: batched, Ratio: ratio(single, batched)},
	}, nil
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

func medianFloat(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
