package testenv

import (
	"context"
	"errors"
	"io"
	"sort"
	"testing"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// ForeignClient is a SpiceDB client that writes as someone else would (zed,
// another service): its writes carry no Tether metadata.
func ForeignClient(tb testing.TB, cfg spicedb.Config) *spicedb.Client {
	tb.Helper()
	s, err := spicedb.New(cfg)
	if err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// ReadAll is a full dump of Tether's resource types through
// ReadRelationships (fully consistent), as sorted strings.
func ReadAll(ctx context.Context, spice *spicedb.Client) ([]string, error) {
	var out []string
	for _, typ := range []string{spicedb.TypeOAuth2Client, spicedb.TypeResourcePool} {
		stream, err := spice.Authzed().ReadRelationships(ctx, &v1.ReadRelationshipsRequest{
			Consistency:        &v1.Consistency{Requirement: &v1.Consistency_FullyConsistent{FullyConsistent: true}},
			RelationshipFilter: &v1.RelationshipFilter{ResourceType: typ},
		})
		if err != nil {
			return nil, err
		}
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, err
			}
			r := resp.GetRelationship()
			out = append(out, spicedb.Relationship{
				ResourceType: r.GetResource().GetObjectType(), ResourceID: r.GetResource().GetObjectId(), Relation: r.GetRelation(),
				SubjectType: r.GetSubject().GetObject().GetObjectType(), SubjectID: r.GetSubject().GetObject().GetObjectId(),
			}.String())
		}
	}
	sort.Strings(out)
	return out, nil
}

// Converged reports whether every change is applied, no sync job is left,
// SpiceDB has Tether's schema and a full ReadRelationships dump equals what
// Postgres implies; if not, it says what differs.
func (tt *Tether) Converged(tb T) (bool, string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var pending, jobsLeft int64
	if err := tt.DB.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM sync_state WHERE applied_generation < generation),
		       (SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state IN ('available','running','retryable','scheduled','pending'))`).
		Scan(&pending, &jobsLeft); err != nil {
		tb.Fatalf("error reading sync state: %v", err)
	}
	if pending > 0 || jobsLeft > 0 {
		return false, "keys pending or jobs left"
	}
	if st, err := tt.SpiceDB.CheckSchema(ctx); err != nil || st != spicedb.SchemaCurrent {
		return false, "schema not current"
	}
	got, err := ReadAll(ctx, tt.SpiceDB)
	if err != nil {
		return false, "SpiceDB unreadable: " + err.Error()
	}
	want := tt.DesiredRelationships(tb)
	missing, extra := diffSorted(want, got), diffSorted(got, want)
	if len(missing) > 0 || len(extra) > 0 {
		return false, "missing " + join(missing) + ", extra " + join(extra)
	}
	return true, ""
}

func join(s []string) string {
	if len(s) > 5 {
		s = append(s[:5:5], "…")
	}
	out := "["
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out + "]"
}

// WaitConverged polls Converged until it holds, failing after timeout; it
// returns how long it took.
func (tt *Tether) WaitConverged(tb T, timeout time.Duration) time.Duration {
	tb.Helper()
	started := time.Now()
	for {
		ok, why := tt.Converged(tb)
		if ok {
			return time.Since(started)
		}
		if time.Since(started) > timeout {
			tb.Fatalf("SpiceDB did not converge to Postgres within %s: %s", timeout, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WatchState reads the watcher's state row.
func (tt *Tether) WatchState(tb T) *dbsqlc.SpicedbWatch {
	tb.Helper()
	st, err := dbsqlc.New().WatchStateGet(context.Background(), tt.DB)
	if err != nil {
		tb.Fatalf("error reading the watch state: %v", err)
	}
	return st
}

// WaitWatchMode waits until the watcher records mode.
func (tt *Tether) WaitWatchMode(tb T, mode string, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := tt.WatchState(tb)
		if st.Mode == mode {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the watcher is in mode %q after %s, want %q (reason %v)", st.Mode, timeout, mode, st.ModeReason)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Sum adds up every series of a counter or gauge vector.
func Sum(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 64)
	go func() { c.Collect(ch); close(ch) }()
	total := 0.0
	for m := range ch {
		var pb dto.Metric
		if err := m.Write(&pb); err != nil {
			continue
		}
		total += pb.GetCounter().GetValue() + pb.GetGauge().GetValue()
	}
	return total
}
