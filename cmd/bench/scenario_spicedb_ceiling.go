package main

import (
	"context"
	"fmt"
	"time"

	"github.com/tetherhq/tether/jobs/spicedb"
)

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
