package main

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// 7. Heal after an outage: SpiceDB down while changes keep coming; time from
// its return until every change is applied. Baseline: the same backlog
// drained by workers started with SpiceDB up.
func scenarioHeal(ctx context.Context, b *bench) ([]Metric, error) {
	outage := 30 * time.Second
	if b.full {
		outage = 60 * time.Second
	}
	const rate = 100
	e, err := b.engine(ctx, engineOpts{workers: true})
	if err != nil {
		return nil, err
	}
	defer e.close()
	if err := e.provider(ctx, "p"); err != nil {
		return nil, err
	}
	e.proc.stop()
	n, err := changesDuringOutage(ctx, e, "h", outage, rate)
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

	// Baseline: the same backlog queued with no worker running, then drained
	// (no healer: its first restore would run during the drain).
	q, err := b.engine(ctx, engineOpts{noHeal: true})
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
		Ratio: ratio(heal.Seconds(), drain.Seconds()), Target: "≤ 15 s and ≤ 2× the drain",
		Pass: passIf(heal <= 15*time.Second && heal.Seconds() <= 2*drain.Seconds())}}, nil
}

// changesDuringOutage connects prefix0… at rate per second for the
// outage's length, through the service (SpiceDB down: each must still be
// accepted), and returns how many it made.
func changesDuringOutage(ctx context.Context, e *engine, prefix string, outage time.Duration, rate int) (int, error) {
	n := int(outage.Seconds()) * rate
	interval := time.Second / time.Duration(rate)
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
