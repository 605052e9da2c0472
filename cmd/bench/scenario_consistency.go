package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/jobs"
)

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
		b.addCDF("cdf", cdfSeries{label: fmt.Sprintf("%d changes/s", rate), values: applied})
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
	b.addCDF("cdf", cdfSeries{label: "baseline 200/s (River defaults)", values: baseApplied, dashed: true})
	return out, nil
}
