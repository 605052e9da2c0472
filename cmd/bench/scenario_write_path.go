package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/tetherhq/tether/jobs"
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
		return disconnectRate(ctx, c, d, batch, func(cn conn) error {
			return do(ctx, "DELETE", e.url+"/api/data/oauth2/connections/"+cn.id.String(), tokens[cn.user], "", 204)
		})
	}
	raw := func(c int, batch []conn) (float64, error) {
		return disconnectRate(ctx, c, d, batch, func(cn conn) error { return rawDisconnect(ctx, e, cn) })
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

// disconnectRate disconnects batch's connections from c goroutines for d
// and returns the rate, in disconnects a second.
func disconnectRate(ctx context.Context, c int, d time.Duration, batch []conn, disconnect func(conn) error) (float64, error) {
	n, took, err := closedLoop(ctx, c, d, len(batch), func(i int) error { return disconnect(batch[i]) })
	return float64(n) / took.Seconds(), err
}

// rawDisconnect is the baseline's disconnect: the statements Tether's
// disconnect runs — delete the row, mark the key changed, InsertTx its
// job — in one transaction of a plain pgx program, with no HTTP, no
// authentication and no service layer around it.
func rawDisconnect(ctx context.Context, e *engine, c conn) error {
	tx, err := e.db.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	var provider string
	if err := tx.QueryRow(ctx, "DELETE FROM oauth2_connections WHERE id = $1 AND user_id = $2 RETURNING provider_id",
		c.id, c.user).Scan(&provider); err != nil {
		return err
	}
	key := jobs.ConnectionKeyID(provider, c.user)
	if _, err := tx.Exec(ctx, `INSERT INTO sync_state (kind, key_id, provider_id, user_id, generation, changed_at, pending_since, revoke_pending_since)
		VALUES ('connection', $1, $2, $3, nextval('sync_generation_seq'), clock_timestamp(), now(), now())
		ON CONFLICT (kind, key_id) DO UPDATE SET generation = EXCLUDED.generation, changed_at = clock_timestamp(),
		pending_since = COALESCE(sync_state.pending_since, now()), revoke_pending_since = COALESCE(sync_state.revoke_pending_since, now())`,
		key, provider, c.user); err != nil {
		return err
	}
	if _, err := e.river.InsertTx(ctx, tx, jobs.SyncConnectionArgs{ProviderID: provider, UserID: c.user}, nil); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
