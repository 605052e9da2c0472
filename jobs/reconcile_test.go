package jobs_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// The streamed reconcile against real SpiceDB, on both datastores Tether
// meets (memory in the tests, Postgres in production): a restore into the
// empty store by bulk import, then a store with relationships missing and
// extra ones across several export and read pages, with ids whose byte
// order is not their natural one ("10" < "9", "U_" < "user", encoded
// subjects starting with "/"). A dry run finds exactly the drift, a run
// repairs it, and no stream is ever found out of order.
func TestReconcileStreamsFindDrift(t *testing.T) {
	t.Parallel()
	for _, onPostgres := range []bool{false, true} {
		name := map[bool]string{false: "memory", true: "postgres"}[onPostgres]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			opts := testenv.TetherOpts{}
			if onPostgres {
				proc := testenv.StartSpiceDBProcess(t, true)
				opts.SpiceDB = func(c *spicedb.Config) { *c = proc.Config() }
			}
			tt := testenv.StartTether(t, opts)
			loadReconcileFixture(t, tt, 24_000)
			desired := desiredRelationships(t, tt)
			require.Greater(t, len(desired), 2*10_000, "more than two pages of each stream")

			restore, err := tt.Reconciler.Run(ctx, jobs.ReconcileOpts{})
			require.NoError(t, err)
			require.Empty(t, restore.StreamFallback)
			require.EqualValues(t, len(desired), restore.Desired)
			require.EqualValues(t, len(desired), restore.Missing)
			require.EqualValues(t, len(desired), restore.Imported, "restored by bulk import")
			require.Contains(t, restore.PhaseSeconds, "compare")
			tt.RequireInSync(t)

			var drift []spicedb.Update
			for i := 0; i < len(desired); i += 997 {
				drift = append(drift, spicedb.Update{Relationship: desired[i], Delete: true})
			}
			missing := len(drift)
			extras := []spicedb.Relationship{
				{ResourceType: spicedb.TypeResourcePool, ResourceID: "7", Relation: spicedb.RelViewer, SubjectType: spicedb.TypeUser, SubjectID: "mallory"},
				{ResourceType: spicedb.TypeResourcePool, ResourceID: "99999", Relation: spicedb.RelViewer, SubjectType: spicedb.TypeUser, SubjectID: "ghost"},
				{ResourceType: spicedb.TypeResourcePool, ResourceID: "4", Relation: spicedb.RelProvider, SubjectType: spicedb.TypeOAuth2Client, SubjectID: "b"},
				{ResourceType: spicedb.TypeOAuth2Client, ResourceID: "a", Relation: spicedb.RelConnected, SubjectType: spicedb.TypeUser, SubjectID: "intruder"},
				{ResourceType: spicedb.TypeOAuth2Client, ResourceID: "zz", Relation: spicedb.RelConnected, SubjectType: spicedb.TypeUser, SubjectID: "user-1"},
			}
			for _, rel := range extras {
				require.NotContains(t, desired, rel)
				drift = append(drift, spicedb.Update{Relationship: rel})
			}
			_, err = tt.SpiceDB.Write(ctx, drift)
			require.NoError(t, err)

			dry, err := tt.Reconciler.Run(ctx, jobs.ReconcileOpts{DryRun: true})
			require.NoError(t, err)
			require.Empty(t, dry.StreamFallback)
			require.EqualValues(t, missing, dry.Missing)
			require.EqualValues(t, len(extras), dry.Extra)
			require.EqualValues(t, len(desired), dry.Desired)
			require.EqualValues(t, len(desired)-missing+len(extras), dry.Actual)
			require.Zero(t, dry.Repaired)

			report, err := tt.Reconciler.Run(ctx, jobs.ReconcileOpts{})
			require.NoError(t, err)
			require.Empty(t, report.StreamFallback)
			require.EqualValues(t, missing+len(extras), report.Repaired)
			require.Zero(t, report.Imported, "a store with relationships is repaired with TOUCH and DELETE")
			tt.RequireInSync(t)

			again, err := tt.Reconciler.Run(ctx, jobs.ReconcileOpts{DryRun: true})
			require.NoError(t, err)
			require.Zero(t, again.Drift())
			require.EqualValues(t, len(desired), again.Checked)
		})
	}
}

// SpiceDB's export out of order (each page's last two relationships
// swapped, a fault injected into the real export), late in the stream: the
// merge has already repaired two pages of drift when it notices. The run
// falls back to the table-based comparison, says so, counts it, and leaves
// SpiceDB exactly in step; later runs of the process compare in Postgres
// straight away.
func TestReconcileFallsBackWhenExportOutOfOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tt := testenv.StartTether(t, testenv.TetherOpts{})
	loadReconcileFixture(t, tt, 2_500)
	// A store that is not empty (so no bulk import), holding only
	// relationships that sort after every desired connection.
	tail := []spicedb.Relationship{
		{ResourceType: spicedb.TypeOAuth2Client, ResourceID: "zz", Relation: spicedb.RelConnected, SubjectType: spicedb.TypeUser, SubjectID: "x"},
		{ResourceType: spicedb.TypeResourcePool, ResourceID: "99999", Relation: spicedb.RelViewer, SubjectType: spicedb.TypeUser, SubjectID: "a"},
		{ResourceType: spicedb.TypeResourcePool, ResourceID: "99999", Relation: spicedb.RelViewer, SubjectType: spicedb.TypeUser, SubjectID: "b"},
	}
	var updates []spicedb.Update
	for _, rel := range tail {
		updates = append(updates, spicedb.Update{Relationship: rel})
	}
	_, err := tt.SpiceDB.Write(ctx, updates)
	require.NoError(t, err)
	desired := desiredRelationships(t, tt)

	jobs.SetReconcileExport(tt.Reconciler, func(ctx context.Context, fn func([]spicedb.Relationship) error) error {
		return tt.SpiceDB.Export(ctx, func(page []spicedb.Relationship) error {
			if n := len(page); n >= 2 {
				page[n-2], page[n-1] = page[n-1], page[n-2]
			}
			return fn(page)
		})
	})
	report, err := tt.Reconciler.Run(ctx, jobs.ReconcileOpts{})
	require.NoError(t, err)
	require.Contains(t, report.StreamFallback, "spicedb stream is not in byte order at row 3")
	require.EqualValues(t, 1, testenv.Sum(tt.Metrics.ReconcileFallbacks))
	// Before the third row of the export, every desired relationship and two
	// extra ones were drift: their full pages were written; the fallback
	// found (and repaired) the rest.
	flushed := (len(desired) + 2) / spicedb.MaxUpdatesPerWrite * spicedb.MaxUpdatesPerWrite
	require.GreaterOrEqual(t, flushed, 2*spicedb.MaxUpdatesPerWrite)
	require.EqualValues(t, len(desired), report.Desired)
	require.EqualValues(t, len(tail)+flushed, report.Actual)
	require.EqualValues(t, len(desired)-flushed, report.Missing)
	require.EqualValues(t, len(tail), report.Extra)
	require.EqualValues(t, len(desired)+len(tail), report.Repaired, "what the streamed pass wrote, and the rest")
	tt.RequireInSync(t)

	again, err := tt.Reconciler.Run(ctx, jobs.ReconcileOpts{DryRun: true})
	require.NoError(t, err)
	require.Contains(t, again.StreamFallback, "an earlier run")
	require.Zero(t, again.Drift())
	require.EqualValues(t, len(desired), again.Actual)
	require.EqualValues(t, 1, testenv.Sum(tt.Metrics.ReconcileFallbacks), "counted once, when found")
}

// loadReconcileFixture loads providers a, b and a-b, about n connections
// (some not granting access), 120 pools linked round-robin (some public,
// some unlinked) and manual viewers straight into Postgres, and nothing into
// SpiceDB. Every fifth user id needs encoding, every seventh starts in
// upper case.
func loadReconcileFixture(t *testing.T, tt *testenv.Tether, n int) {
	t.Helper()
	ctx := context.Background()
	for _, p := range []string{"a", "b", "a-b"} {
		tt.Provider(t, p)
	}
	for _, stmt := range []string{
		`INSERT INTO oauth2_connections (user_id, provider_id, status)
		 SELECT CASE WHEN g % 5 = 0 THEN 'user.' || g || '@example.org' WHEN g % 7 = 0 THEN 'U_' || g ELSE 'user-' || g END,
		        (ARRAY['a', 'b', 'a-b'])[g % 3 + 1], CASE WHEN g % 11 = 0 THEN 'error' ELSE 'connected' END
		 FROM generate_series(1, $1::int) g`,
		`INSERT INTO resource_pools (name, remote_provider_id, public)
		 SELECT 'pool-' || g, CASE WHEN g % 4 = 0 THEN NULL ELSE (ARRAY['a', 'b', 'a-b'])[g % 3 + 1] END, g % 3 = 0
		 FROM generate_series(1, 120) g`,
		`INSERT INTO resource_pool_viewers (resource_pool_id, user_id)
		 SELECT p.id, CASE WHEN g % 2 = 0 THEN 'viewer.' || g || '@example.org' ELSE 'V-' || g END
		 FROM generate_series(1, 300) g JOIN resource_pools p ON p.name = 'pool-' || (g % 120 + 1)`,
	} {
		args := []any{}
		if strings.Contains(stmt, "$1") {
			args = append(args, n)
		}
		_, err := tt.DB.Exec(ctx, stmt, args...)
		require.NoError(t, err, stmt)
	}
}

// desiredRelationships reads desired_relationships, sorted as SpiceDB
// exports.
func desiredRelationships(t *testing.T, tt *testenv.Tether) []spicedb.Relationship {
	t.Helper()
	rows, err := tt.DB.Query(context.Background(),
		"SELECT resource_type, resource_id, relation, subject_type, subject_id FROM desired_relationships")
	require.NoError(t, err)
	defer rows.Close()
	var out []spicedb.Relationship
	for rows.Next() {
		var r spicedb.Relationship
		require.NoError(t, rows.Scan(&r.ResourceType, &r.ResourceID, &r.Relation, &r.SubjectType, &r.SubjectID))
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	slices.SortFunc(out, spicedb.CompareRelationships)
	return out
}
