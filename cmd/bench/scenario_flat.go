package main

import (
	"context"
	"fmt"
	"time"

	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

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
