package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/jobs/spicedb"
)

var httpClient = &http.Client{
	Transport: &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute},
	Timeout:   60 * time.Second,
}

func (e *engine) provider(ctx context.Context, id string) error {
	kind, name, clientID, auth, tok := "generic_oauth2", "Bench "+id, "client", "https://idp.example/auth", "https://idp.example/token"
	_, err := e.svc.ProviderCreate(ctx, &app.ProviderInput{ID: &id, Kind: &kind, DisplayName: &name, ClientID: &clientID,
		AuthorizationURL: &auth, TokenURL: &tok})
	return err
}

type conn struct {
	id   uuid.UUID
	user string
}

// bulkConnections loads n connected users of a provider straight into
// Postgres (COPY) and, if project, their relationships into SpiceDB.
func (e *engine) bulkConnections(ctx context.Context, provider, prefix string, n int, project bool) ([]conn, error) {
	rows := make([][]any, n)
	for i := range n {
		rows[i] = []any{fmt.Sprintf("%s%d", prefix, i), provider, "connected"}
	}
	if _, err := e.db.CopyFrom(ctx, pgx.Identifier{"oauth2_connections"}, []string{"user_id", "provider_id", "status"}, pgx.CopyFromRows(rows)); err != nil {
		return nil, fmt.Errorf("error loading connections: %w", err)
	}
	out := make([]conn, 0, n)
	r, err := e.db.Query(ctx, "SELECT id, user_id FROM oauth2_connections WHERE provider_id = $1 AND starts_with(user_id, $2)", provider, prefix)
	if err != nil {
		return nil, err
	}
	for r.Next() {
		var c conn
		if err := r.Scan(&c.id, &c.user); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if err := r.Err(); err != nil {
		return nil, err
	}
	if project {
		rels := make([]spicedb.Update, len(out))
		for i, c := range out {
			rels[i] = spicedb.Update{Relationship: spicedb.Relationship{ResourceType: spicedb.TypeOAuth2Client, ResourceID: provider,
				Relation: spicedb.RelConnected, SubjectType: spicedb.TypeUser, SubjectID: spicedb.SubjectID(c.user)}}
		}
		if err := e.bulkWrite(ctx, rels); err != nil {
			return nil, err
		}
	}
	return out, e.analyze(ctx)
}

// bulkPools creates n pools linked to provider, in Postgres and SpiceDB.
func (e *engine) bulkPools(ctx context.Context, provider string, n int) ([]int64, error) {
	r, err := e.db.Query(ctx, "INSERT INTO resource_pools (name, remote_provider_id) SELECT 'pool-' || g, $1 FROM generate_series(1, $2) g RETURNING id", provider, n)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(r, pgx.RowTo[int64])
	if err != nil {
		return nil, err
	}
	rels := make([]spicedb.Update, len(ids))
	for i, id := range ids {
		rels[i] = spicedb.Update{Relationship: spicedb.Relationship{ResourceType: spicedb.TypeResourcePool, ResourceID: fmt.Sprint(id),
			Relation: spicedb.RelProvider, SubjectType: spicedb.TypeOAuth2Client, SubjectID: provider}}
	}
	if err := e.bulkWrite(ctx, rels); err != nil {
		return nil, err
	}
	return ids, e.analyze(ctx)
}

// analyze refreshes the planner statistics of both databases after a bulk
// load, as autovacuum would within a minute or so, and checkpoints. Measured without it,
// SpiceDB's planner still believes relation_tuple empty and deletes one
// relationship by scanning all of them (0.5 s each at 240,000).
func (e *engine) analyze(ctx context.Context) error {
	// The loaded tables only: analyzing river_job or sync_state while they
	// are empty would tell the planner they stay empty, and River's fetch
	// then scans the whole job table (53 ms a fetch under load, measured).
	if _, err := e.db.Exec(ctx, "ANALYZE oauth2_connections, resource_pools"); err != nil {
		return fmt.Errorf("error analyzing Tether's database: %w", err)
	}
	conn, err := pgx.Connect(ctx, e.proc.dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "ANALYZE relation_tuple"); err != nil {
		return fmt.Errorf("error analyzing SpiceDB's database: %w", err)
	}
	// Flush the load's dirty pages now rather than during the measurement:
	// a checkpoint behind a bulk load slows every commit's WAL flush.
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("error checkpointing: %w", err)
	}
	return nil
}

// bulkWrite writes relationships 1,000 per call, four calls at a time.
func (e *engine) bulkWrite(ctx context.Context, updates []spicedb.Update) error {
	var wg sync.WaitGroup
	var firstErr atomic.Value
	sem := make(chan struct{}, 4)
	for chunk := range slices.Chunk(updates, spicedb.MaxUpdatesPerWrite) {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := e.spice.Write(ctx, chunk); err != nil {
				firstErr.CompareAndSwap(nil, err)
			}
		}()
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	return nil
}

// do sends an HTTP request and checks the status.
func do(ctx context.Context, method, url, token, body string, want int) error {
	var req *http.Request
	var err error
	if body != "" {
		req, err = http.NewRequestWithContext(ctx, method, url, stringsReader(body))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
		}
	} else {
		req, err = http.NewRequestWithContext(ctx, method, url, nil)
	}
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := httpClient.Do(req)
	if err != nil {
		return err
	}
	drain(resp)
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %s", method, url, resp.Status)
	}
	return nil
}

// closedLoop runs work from c goroutines until d has passed or items run
// out, and returns how many calls completed and how long it took.
func closedLoop(ctx context.Context, c int, d time.Duration, n int, work func(i int) error) (int, time.Duration, error) {
	var next, done atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(d)
	start := time.Now()
	var wg sync.WaitGroup
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := work(i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return int(done.Load()), time.Since(start), err
	}
	return int(done.Load()), time.Since(start), nil
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p * float64(len(sorted)-1))
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return percentile(s, 0.5)
}

func medianFloat(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
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
