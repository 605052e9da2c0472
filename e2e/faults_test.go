package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/devtools/devstack"
	"github.com/tetherhq/tether/internal/devtools/faultproxy"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
	"github.com/tetherhq/tether/migrations"
)

const (
	testSecret = testenv.HMACSecret
	adminRole  = testenv.AdminRole
	providerID = "gitlab"
	// maxAnswer bounds every answer, during faults too: slower is a hang.
	maxAnswer = 3 * time.Second
)

// ---- the workload: actors changing access, and a model of what was acknowledged ----

// result classifies one attempt at a change.
type result int

const (
	resOK     result = iota // acknowledged (2xx, or no error from the service)
	resAbsent               // a removal found nothing to remove (404): definitive, nothing there
	resRetry                // 503 unavailable (or a violation): the change may or may not have happened
)

// ops makes single changes. Each returns the attempt's class and, when the
// answer breaks the API's contract (a 500, an error that is not JSON, a
// transport error), a description of the violation; a violation's effect is
// unknown, so it is retried like a 503.
type ops interface {
	addViewer(ctx context.Context, poolID int64, user string) (result, string)
	removeViewer(ctx context.Context, poolID int64, user string) (result, string)
	connect(ctx context.Context, user string) (uuid.UUID, result, string)
	disconnect(ctx context.Context, user string, id uuid.UUID) (result, string)
}

// serviceOps calls the service directly (what the handlers and the OAuth2
// callback call).
type serviceOps struct{ svc *app.Service }

func classifyErr(err error, removal bool) (result, string) {
	if err == nil {
		return resOK, ""
	}
	switch app.ErrorCode(err) {
	case app.EUNAVAILABLE:
		return resRetry, ""
	case app.ENOTFOUND:
		if removal {
			return resAbsent, ""
		}
	}
	return resRetry, fmt.Sprintf("service error with code %q: %v", app.ErrorCode(err), err)
}

func (s serviceOps) addViewer(ctx context.Context, poolID int64, user string) (result, string) {
	_, err := s.svc.PoolViewerAdd(ctx, poolID, []app.PoolViewer{{ID: user}})
	return classifyErr(err, false)
}

func (s serviceOps) removeViewer(ctx context.Context, poolID int64, user string) (result, string) {
	return classifyErr(s.svc.PoolViewerRemove(ctx, poolID, user), true)
}

func (s serviceOps) connect(ctx context.Context, user string) (uuid.UUID, result, string) {
	c, err := s.svc.ConnectionSetStatus(ctx, user, providerID, "connected")
	res, violation := classifyErr(err, false)
	if err != nil {
		return uuid.Nil, res, violation
	}
	return c.ID, res, violation
}

func (s serviceOps) disconnect(ctx context.Context, user string, id uuid.UUID) (result, string) {
	return classifyErr(s.svc.ConnectionDelete(ctx, &app.User{ID: user}, id), true)
}

// httpOps goes through the HTTP API where a route exists (manual viewers as
// admin, disconnect as the user); connecting needs a provider's consent
// page, so it calls what the OAuth2 callback calls.
type httpOps struct {
	serviceOps
	url    string
	client *http.Client
	admin  string
	tokens sync.Map // user → JWT
}

func (h *httpOps) token(t *testing.T, user string) string {
	if tok, ok := h.tokens.Load(user); ok {
		return tok.(string)
	}
	tok, err := app.SignDevToken([]byte(testSecret), user, nil, time.Hour)
	require.NoError(t, err)
	h.tokens.Store(user, tok)
	return tok
}

func (h *httpOps) send(ctx context.Context, method, path, token string, body any) (int, []byte, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, nil, err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, h.url+path, r)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := h.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode >= 400 && !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		return resp.StatusCode, out, fmt.Errorf("error answer with Content-Type %q", resp.Header.Get("Content-Type"))
	}
	return resp.StatusCode, out, err
}

func errorCode(body []byte) string {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || e.Error.Message == "" {
		return ""
	}
	return e.Error.Code
}

func classifyHTTP(status int, body []byte, err error, removal bool) (result, string) {
	switch {
	case err != nil:
		return resRetry, "transport: " + err.Error()
	case status >= 200 && status < 300:
		return resOK, ""
	case status == http.StatusNotFound && removal && errorCode(body) == app.ENOTFOUND:
		return resAbsent, ""
	case status == http.StatusServiceUnavailable && errorCode(body) == app.EUNAVAILABLE:
		return resRetry, ""
	}
	return resRetry, fmt.Sprintf("HTTP %d: %s", status, body)
}

func (h *httpOps) addViewer(ctx context.Context, poolID int64, user string) (result, string) {
	status, body, err := h.send(ctx, http.MethodPost, fmt.Sprintf("/api/data/resource_pools/%d/users", poolID), h.admin,
		[]app.PoolViewer{{ID: user}})
	return classifyHTTP(status, body, err, false)
}

func (h *httpOps) removeViewer(ctx context.Context, poolID int64, user string) (result, string) {
	status, body, err := h.send(ctx, http.MethodDelete,
		fmt.Sprintf("/api/data/resource_pools/%d/users/%s", poolID, url.PathEscape(user)), h.admin, nil)
	return classifyHTTP(status, body, err, true)
}

func (h *httpOps) disconnect(ctx context.Context, user string, id uuid.UUID) (result, string) {
	tok, _ := h.tokens.Load(user)
	status, body, err := h.send(ctx, http.MethodDelete, "/api/data/oauth2/connections/"+id.String(), tok.(string), nil)
	return classifyHTTP(status, body, err, true)
}

// stats counts attempts across actors.
type stats struct {
	requests, acked, absent, unavailable, violations atomic.Int64
	maxLatency                                       atomic.Int64
	lastAck                                          atomic.Int64 // unix nanoseconds
	mu                                               sync.Mutex
	kinds                                            map[string]int // violation → how often
}

// volatile parts of error messages (addresses, durations), so that
// violations group by kind.
var volatile = regexp.MustCompile(`[0-9]+(\.[0-9]+){3}(:[0-9]+)?|[0-9.]+m?s\b`)

func (s *stats) observe(res result, violation string, latency time.Duration) {
	s.requests.Add(1)
	for cur := s.maxLatency.Load(); int64(latency) > cur && !s.maxLatency.CompareAndSwap(cur, int64(latency)); cur = s.maxLatency.Load() {
	}
	if violation != "" {
		s.violations.Add(1)
		kind := volatile.ReplaceAllString(strings.TrimSpace(violation), "…")
		s.mu.Lock()
		if s.kinds == nil {
			s.kinds = map[string]int{}
		}
		s.kinds[kind]++
		s.mu.Unlock()
	}
	switch res {
	case resOK:
		s.acked.Add(1)
		s.lastAck.Store(time.Now().UnixNano())
	case resAbsent:
		s.absent.Add(1)
	case resRetry:
		if violation == "" {
			s.unavailable.Add(1)
		}
	}
}

func (s *stats) String() string {
	return fmt.Sprintf("%d attempts: %d acknowledged, %d absent (404), %d unavailable (503), %d violations, slowest answer %s",
		s.requests.Load(), s.acked.Load(), s.absent.Load(), s.unavailable.Load(), s.violations.Load(),
		time.Duration(s.maxLatency.Load()).Round(time.Millisecond))
}

// checkNoViolations fails the test (and lets it go on checking) if any
// answer broke the contract.
func (s *stats) checkNoViolations(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var kinds []string
	for k, n := range s.kinds {
		kinds = append(kinds, fmt.Sprintf("%5d × %s", n, k))
	}
	sort.Strings(kinds)
	if n := s.violations.Load(); n > 0 {
		t.Errorf("%d answers broke the contract, by kind:\n%s", n, strings.Join(kinds, "\n"))
	}
}

type viewerKey struct {
	pool int64
	user string
}

// model is one actor's view of its own users: what the last definitive
// answer for each key says. Each user belongs to one actor, whose changes are
// sequential, so the last acknowledged change must be what the database holds.
type model struct {
	viewers map[viewerKey]bool
	conns   map[string]uuid.UUID // connected users and their connection's id
	unknown map[string]bool      // users with a change that never got a definitive answer
}

type workload struct {
	t     *testing.T
	ops   ops
	pools []*app.Pool
	users [][]string
	// models[i] belongs to actor i while it runs.
	models []*model
	stats  stats
	// pause between changes, per actor: keeps the race-detector build on two
	// cores responsive.
	pause time.Duration

	stopOnce sync.Once
	stop     chan struct{}
	wg       sync.WaitGroup
}

func newWorkload(t *testing.T, o ops, pools []*app.Pool, actors, usersPerActor int, prefix string) *workload {
	w := &workload{t: t, ops: o, pools: pools, pause: 5 * time.Millisecond, stop: make(chan struct{})}
	for i := range actors {
		var users []string
		for j := range usersPerActor {
			// Some ids are not SpiceDB-safe and go through the subject mapping.
			id := fmt.Sprintf("%s-%d-%d", prefix, i, j)
			if j%3 == 0 {
				id = fmt.Sprintf("%s.%d.%d@example.org", prefix, i, j)
			}
			users = append(users, id)
		}
		w.users = append(w.users, users)
		w.models = append(w.models, &model{viewers: map[viewerKey]bool{}, conns: map[string]uuid.UUID{}, unknown: map[string]bool{}})
	}
	if h, ok := o.(*httpOps); ok {
		for _, us := range w.users {
			for _, u := range us {
				h.token(t, u)
			}
		}
	}
	t.Cleanup(w.halt)
	return w
}

func (w *workload) start() {
	for i := range w.users {
		w.wg.Add(1)
		go func() { defer w.wg.Done(); w.actor(i) }()
	}
}

// waitAcked waits until n more changes are acknowledged from now: traffic
// flows (a signal, instead of sleeping while traffic runs).
func (w *workload) waitAcked(t *testing.T, n int64, why string) {
	t.Helper()
	from := w.stats.acked.Load()
	require.Eventually(t, func() bool { return w.stats.acked.Load() >= from+n }, 20*time.Second, 5*time.Millisecond,
		"%s: fewer than %d changes acknowledged in 20 s (%s)", why, n, &w.stats)
}

// halt stops the actors once each has its current change settled.
func (w *workload) halt() {
	w.stopOnce.Do(func() { close(w.stop) })
	w.wg.Wait()
}

// do retries a change until it gets a definitive answer (as a client told
// to retry on 503 does), for at most 30 s.
func (w *workload) do(fn func(ctx context.Context) (result, string)) (res result, attempts int, ok bool) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		attempts++
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		started := time.Now()
		res, violation := fn(ctx)
		cancel()
		latency := time.Since(started)
		if latency > maxAnswer && violation == "" {
			violation = fmt.Sprintf("an answer took %s", latency.Round(time.Millisecond))
		}
		w.stats.observe(res, violation, latency)
		if res != resRetry {
			return res, attempts, true
		}
		if time.Now().After(deadline) {
			return res, attempts, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *workload) actor(i int) {
	m := w.models[i]
	rng := rand.New(rand.NewPCG(uint64(i)+1, uint64(time.Now().UnixNano())))
	for {
		select {
		case <-w.stop:
			return
		case <-time.After(w.pause):
		}
		user := w.users[i][rng.IntN(len(w.users[i]))]
		if m.unknown[user] {
			continue
		}
		pool := w.pools[rng.IntN(len(w.pools))].ID
		key := viewerKey{pool, user}
		_, connected := m.conns[user]
		switch op := rng.IntN(4); {
		case op == 0:
			if _, _, ok := w.do(func(ctx context.Context) (result, string) { return w.ops.addViewer(ctx, pool, user) }); !ok {
				m.unknown[user] = true
				w.t.Errorf("adding viewer %s to pool %d never got a definitive answer", user, pool)
				continue
			}
			m.viewers[key] = true
		case op == 1:
			res, attempts, ok := w.do(func(ctx context.Context) (result, string) { return w.ops.removeViewer(ctx, pool, user) })
			if !ok {
				m.unknown[user] = true
				w.t.Errorf("removing viewer %s from pool %d never got a definitive answer", user, pool)
				continue
			}
			// 404 at the first attempt while an acknowledged add stands: an
			// acknowledged change was lost. (After an ambiguous attempt, 404
			// just means that attempt did commit.)
			if res == resAbsent && attempts == 1 && m.viewers[key] {
				w.t.Errorf("viewer %s of pool %d was acknowledged, but removing it finds nothing", user, pool)
			}
			delete(m.viewers, key)
		case op == 2 || !connected:
			var id uuid.UUID
			if _, _, ok := w.do(func(ctx context.Context) (result, string) {
				var res result
				var violation string
				id, res, violation = w.ops.connect(ctx, user)
				return res, violation
			}); !ok {
				m.unknown[user] = true
				w.t.Errorf("connecting %s never got a definitive answer", user)
				continue
			}
			if old, ok := m.conns[user]; ok && old != id {
				w.t.Errorf("connecting %s again changed its connection id from %s to %s: the acknowledged connection was lost", user, old, id)
			}
			m.conns[user] = id
		default:
			id := m.conns[user]
			res, attempts, ok := w.do(func(ctx context.Context) (result, string) { return w.ops.disconnect(ctx, user, id) })
			if !ok {
				m.unknown[user] = true
				w.t.Errorf("disconnecting %s never got a definitive answer", user)
				continue
			}
			if res == resAbsent && attempts == 1 {
				w.t.Errorf("connection %s of %s was acknowledged, but disconnecting finds nothing", id, user)
			}
			delete(m.conns, user)
		}
	}
}

// expectation is what all acknowledged changes add up to (after halt).
type expectation struct {
	viewers map[viewerKey]bool
	conns   map[string]bool
	unknown map[string]bool
	users   []string
}

func (w *workload) expected() *expectation {
	e := &expectation{viewers: map[viewerKey]bool{}, conns: map[string]bool{}, unknown: map[string]bool{}}
	for i, m := range w.models {
		e.users = append(e.users, w.users[i]...)
		for k, v := range m.viewers {
			e.viewers[k] = v
		}
		for u := range m.conns {
			e.conns[u] = true
		}
		for u := range m.unknown {
			e.unknown[u] = true
		}
	}
	return e
}

func (e *expectation) canView(pool *app.Pool, user string) bool {
	return pool.Public || e.viewers[viewerKey{pool.ID, user}] ||
		(e.conns[user] && pool.Remote != nil && pool.Remote.ProviderID == providerID)
}

// requireDatabase checks Postgres against the acknowledged changes:
// acknowledged ⇒ present, removed (2xx or 404) ⇒ absent, for every user
// whose last change got a definitive answer.
func (w *workload) requireDatabase(t *testing.T, db *pgxpool.Pool) *expectation {
	t.Helper()
	ctx := context.Background()
	e := w.expected()
	prefix := w.users[0][0][:strings.IndexAny(w.users[0][0], "-.")]
	gotViewers := map[viewerKey]bool{}
	rows, err := db.Query(ctx, "SELECT resource_pool_id, user_id FROM resource_pool_viewers")
	require.NoError(t, err)
	for rows.Next() {
		var k viewerKey
		require.NoError(t, rows.Scan(&k.pool, &k.user))
		gotViewers[k] = true
	}
	require.NoError(t, rows.Err())
	gotConns := map[string]bool{}
	rows, err = db.Query(ctx, "SELECT user_id FROM oauth2_connections WHERE provider_id = $1 AND status = 'connected'", providerID)
	require.NoError(t, err)
	for rows.Next() {
		var u string
		require.NoError(t, rows.Scan(&u))
		gotConns[u] = true
	}
	require.NoError(t, rows.Err())
	var mismatches []string
	for _, u := range e.users {
		if e.unknown[u] {
			continue
		}
		for _, p := range w.pools {
			k := viewerKey{p.ID, u}
			if e.viewers[k] != gotViewers[k] {
				mismatches = append(mismatches, fmt.Sprintf("viewer %s of pool %d: acknowledged %v, database %v", u, p.ID, e.viewers[k], gotViewers[k]))
			}
		}
		if e.conns[u] != gotConns[u] {
			mismatches = append(mismatches, fmt.Sprintf("connection of %s: acknowledged %v, database %v", u, e.conns[u], gotConns[u]))
		}
	}
	for k := range gotViewers {
		if strings.HasPrefix(k.user, prefix) && !e.viewers[k] && !e.unknown[k.user] {
			mismatches = append(mismatches, fmt.Sprintf("viewer %s of pool %d in the database was never acknowledged", k.user, k.pool))
		}
	}
	require.Empty(t, mismatches, "Postgres differs from the acknowledged changes")
	return e
}

// requireSpiceDB checks SpiceDB (fully consistent) against the acknowledged
// changes, for every user and pool.
func requireSpiceDB(t *testing.T, tt *testenv.Tether, pools []*app.Pool, e *expectation) {
	t.Helper()
	var mismatches []string
	for _, u := range e.users {
		if e.unknown[u] {
			continue
		}
		for _, p := range pools {
			if want, got := e.canView(p, u), tt.CanView(t, u, p.ID); want != got {
				mismatches = append(mismatches, fmt.Sprintf("%s on pool %d: want view=%v, SpiceDB says %v", u, p.ID, want, got))
			}
		}
	}
	require.Empty(t, mismatches, "SpiceDB differs from the acknowledged changes")
}

// drain waits until every change is applied and no sync job is left, then
// requires SpiceDB to equal the database and a reconcile dry run to find no
// drift. It returns how long draining took.
func drain(t *testing.T, tt *testenv.Tether, timeout time.Duration) time.Duration {
	t.Helper()
	started := time.Now()
	tt.WaitSynced(t, timeout)
	took := time.Since(started)
	tt.RequireInSync(t)
	dry, err := tt.Reconciler.Run(context.Background(), jobs.ReconcileOpts{DryRun: true})
	require.NoError(t, err)
	require.Equal(t, "current", dry.Schema)
	require.Zero(t, dry.Drift(), "reconcile --dry-run: %d missing, %d extra", dry.Missing, dry.Extra)
	require.Zero(t, dry.Pending)
	var discarded int
	require.NoError(t, tt.DB.QueryRow(context.Background(),
		"SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state = 'discarded'").Scan(&discarded))
	require.Zero(t, discarded, "no sync job may be discarded")
	return took
}

// ---- wiring ----

// captureWriter keeps the first 1 MiB written to it that passes keep (all
// of it if keep is nil).
type captureWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	keep func([]byte) bool
}

func (c *captureWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.buf.Len() < 1<<20 && (c.keep == nil || c.keep(p)) {
		c.buf.Write(p)
	}
	return len(p), nil
}

func (c *captureWriter) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

var logError = regexp.MustCompile(`msg="request failed" error="((?:[^"\\]|\\.)*)" path=(\S+)`)

// causes groups the server's "request failed" log lines that are not 503
// unavailable by cause and route.
func (c *captureWriter) causes() []string {
	counts := map[string]int{}
	for _, m := range logError.FindAllStringSubmatch(c.String(), -1) {
		if strings.HasPrefix(m[1], app.EUNAVAILABLE+":") {
			continue
		}
		counts[volatile.ReplaceAllString(m[1], "…")+"  ["+m[2]+"]"]++
	}
	var out []string
	for k, n := range counts {
		out = append(out, fmt.Sprintf("%5d × %s", n, k))
	}
	sort.Strings(out)
	return out
}

// startServe starts an engine as `tether serve` wires it (HTTP API, workers,
// batching) on the given database and a fresh SpiceDB store. It returns the
// engine and the server's error log, less the 503s: the causes of other 5xx.
func startServe(t *testing.T, databaseURL string, tune func(*jobs.ClientConfig)) (*testenv.Tether, *captureWriter) {
	t.Helper()
	errorsLog := &captureWriter{keep: func(line []byte) bool {
		return bytes.Contains(line, []byte(`msg="request failed"`)) && !bytes.Contains(line, []byte(`error="`+app.EUNAVAILABLE+":"))
	}}
	tt := testenv.StartTether(t, testenv.TetherOpts{
		DatabaseURL: databaseURL, Client: tune,
		Config: func(c *config.Config) { c.RetryMaxBackoff = 500 * time.Millisecond },
		Logger: slog.New(slog.NewTextHandler(errorsLog, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	return tt, errorsLog
}

func adminToken(t *testing.T) string {
	tok, err := app.SignDevToken([]byte(testSecret), "root", []string{adminRole}, time.Hour)
	require.NoError(t, err)
	return tok
}

// setupPools creates the provider and pools through the service: two pools
// linked to the provider, one with manual viewers only, one public.
func setupPools(t *testing.T, tt *testenv.Tether) []*app.Pool {
	t.Helper()
	tt.Provider(t, providerID)
	return []*app.Pool{
		tt.Pool(t, "linked-a", providerID, false),
		tt.Pool(t, "linked-b", providerID, false),
		tt.Pool(t, "manual", "", false),
		tt.Pool(t, "public", "", true),
	}
}

func count(t *testing.T, db *pgxpool.Pool, query string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, db.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

const liveSyncJobs = "SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state IN ('available','running','retryable','scheduled','pending')"

// ---- the faults ----

// TestPostgresRestartUnderTraffic restarts a dedicated Postgres twice (fast
// shutdown, then immediate shutdown with crash recovery) while actors change
// access through the HTTP API and the service. During each outage the API
// must answer 503 with a JSON "unavailable" error, never 500 and never hang;
// afterwards it must recover without a restart of Tether, every acknowledged
// change must be in Postgres, and the engine must drain to zero drift.
func TestPostgresRestartUnderTraffic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "tether-e2e-pg-*")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755)) // as root, Postgres runs as user postgres
	stack, err := devstack.Start(ctx, devstack.Options{Dir: dir, SkipSpiceDB: true, Fast: false})
	require.NoError(t, err)
	t.Cleanup(stack.Stop)
	migratePool, err := pgxpool.New(ctx, stack.DatabaseURL)
	require.NoError(t, err)
	m, err := migrations.New(migratePool)
	require.NoError(t, err)
	_, err = m.Up(ctx)
	require.NoError(t, err)
	_ = m.Close()
	migratePool.Close()

	tt, serverErrors := startServe(t, stack.DatabaseURL, func(c *jobs.ClientConfig) {
		c.JobTimeout = 5 * time.Second
		c.RescueStuckJobsAfter = 10 * time.Second
	})
	base := tt.URL
	hops := &httpOps{serviceOps: serviceOps{svc: tt.Service}, url: base, client: &http.Client{Timeout: 5 * time.Second}, admin: adminToken(t)}
	// The admin sets up through the API.
	status, body, err := hops.send(ctx, http.MethodPost, "/api/data/oauth2/providers", hops.admin, map[string]any{
		"id": providerID, "kind": "generic_oauth2", "display_name": "GitLab", "client_id": "tether", "client_secret": "s3cret",
		"authorization_url": "https://idp.example/auth", "token_url": "https://idp.example/token",
	})
	require.NoError(t, err)
	require.Equal(t, http.StatusCreated, status, "%s", body)
	var pools []*app.Pool
	for _, in := range []map[string]any{
		{"name": "linked-a", "remote": map[string]any{"provider_id": providerID}},
		{"name": "linked-b", "remote": map[string]any{"provider_id": providerID}},
		{"name": "manual"},
		{"name": "public", "public": true},
	} {
		status, body, err := hops.send(ctx, http.MethodPost, "/api/data/resource_pools", hops.admin, in)
		require.NoError(t, err)
		require.Equal(t, http.StatusCreated, status, "%s", body)
		var p app.Pool
		require.NoError(t, json.Unmarshal(body, &p))
		pools = append(pools, &p)
	}
	tt.WaitSynced(t, 15*time.Second)

	w := newWorkload(t, hops, pools, 8, 5, "pg")
	w.start()
	w.waitAcked(t, 20, "traffic flows before the fault")

	for _, fault := range []struct {
		name string
		mode devstack.ShutdownMode
	}{{"fast shutdown", devstack.ShutdownFast}, {"immediate shutdown", devstack.ShutdownImmediate}} {
		before503, beforeReq := w.stats.unavailable.Load(), w.stats.requests.Load()
		down := time.Now()
		require.NoError(t, stack.StopPostgres(fault.mode))
		stopped := time.Since(down)
		require.Eventually(t, func() bool { return w.stats.unavailable.Load() >= before503+5 }, 20*time.Second, 5*time.Millisecond,
			"the outage must be seen as 503s (%s)", &w.stats)
		require.NoError(t, stack.StartPostgresAgain(ctx))
		up := time.Now()
		require.Eventually(t, func() bool { return w.stats.lastAck.Load() > up.UnixNano() }, 20*time.Second, 5*time.Millisecond,
			"the API does not recover after Postgres is back (%s)", &w.stats)
		recovered := time.Since(up)
		t.Logf("%s: Postgres stopped in %s, down for %s; %d requests meanwhile, %d answered 503; first acknowledged change %s after Postgres accepted connections again",
			fault.name, stopped.Round(time.Millisecond), up.Sub(down).Round(time.Millisecond), w.stats.requests.Load()-beforeReq,
			w.stats.unavailable.Load()-before503, recovered.Round(time.Millisecond))
		require.Greater(t, w.stats.unavailable.Load(), before503, "the outage must be seen as 503s")
		w.waitAcked(t, 30, "traffic on the recovered database")
	}
	w.halt()
	t.Logf("traffic: %s", &w.stats)
	if causes := serverErrors.causes(); len(causes) > 0 {
		t.Logf("causes of HTTP 5xx other than 503 unavailable, from the server's log:\n%s", strings.Join(causes, "\n"))
	}
	w.stats.checkNoViolations(t)
	require.Less(t, time.Duration(w.stats.maxLatency.Load()), maxAnswer)

	e := w.requireDatabase(t, tt.DB)
	require.Empty(t, e.unknown)
	// Read-your-writes through the API: each user's pool list is what the
	// acknowledged changes allow.
	for _, u := range e.users {
		status, body, err := hops.send(ctx, http.MethodGet, "/api/data/resource_pools", hops.token(t, u), nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status, "%s", body)
		var listed []*app.Pool
		require.NoError(t, json.Unmarshal(body, &listed))
		got := map[int64]bool{}
		for _, p := range listed {
			got[p.ID] = true
		}
		for _, p := range pools {
			require.Equal(t, e.canView(p, u), got[p.ID], "GET /resource_pools of %s, pool %d", u, p.ID)
		}
	}
	took := drain(t, tt, 45*time.Second)
	t.Logf("drained %s after traffic stopped", took.Round(time.Millisecond))
	requireSpiceDB(t, tt, w.pools, e)
}

// A SpiceDB wiped under traffic is TestSpiceDBWipedUnderTraffic
// (heal_test.go): restored with no command run.

// TestSlowNetworkToSpiceDB puts a proxy between the engine and SpiceDB and
// adds latency beyond the job timeout: every call times out, jobs retry
// (keys pending, last_error set) and none stays running past its timeout.
// Then the latency goes, the connections are reset, and everything
// converges.
func TestSlowNetworkToSpiceDB(t *testing.T) {
	t.Parallel()
	const jobTimeout = time.Second
	var proxy *faultproxy.Proxy
	tt := testenv.StartTether(t, testenv.TetherOpts{
		SpiceDB: throughProxy(t, &proxy),
		Client: func(c *jobs.ClientConfig) {
			c.MaxWorkers = 16
			c.JobTimeout = jobTimeout
			c.RescueStuckJobsAfter = 3 * time.Second
		},
	})
	pools := setupPools(t, tt)
	tt.WaitSynced(t, 15*time.Second)

	proxy.SetLatency(1500 * time.Millisecond) // each way: far beyond the 1 s job timeout
	slow := time.Now()
	w := newWorkload(t, serviceOps{svc: tt.Service}, pools, 4, 6, "slow")
	w.pause = 50 * time.Millisecond // every change queues a job: keep the backlog modest
	w.start()
	var longestRun float64
	for time.Since(slow) < 4*time.Second {
		var age float64
		require.NoError(t, tt.DB.QueryRow(context.Background(),
			"SELECT COALESCE(max(extract(epoch FROM now() - attempted_at)), 0)::float8 FROM river_job WHERE kind LIKE 'tether.sync_%' AND state = 'running'").Scan(&age))
		longestRun = max(longestRun, age)
		require.Less(t, age, (jobTimeout + 1500*time.Millisecond).Seconds(), "a job is stuck running past its timeout")
		time.Sleep(100 * time.Millisecond)
	}
	pending := count(t, tt.DB, "SELECT count(*) FROM sync_state WHERE applied_generation < generation")
	failing := count(t, tt.DB, "SELECT count(*) FROM sync_state WHERE applied_generation < generation AND last_error IS NOT NULL")
	// Every change queues a job, so the backlog is long and a timed-out job
	// goes back into it (available or retryable, its error recorded) rather
	// than running again at once.
	requeued := count(t, tt.DB, `SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%'
		AND state IN ('available','retryable') AND attempt >= 1 AND cardinality(errors) >= 1`)
	jobsQueued := count(t, tt.DB, liveSyncJobs)
	require.Zero(t, count(t, tt.DB, "SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state IN ('cancelled','discarded')"),
		"a timeout is transient: no job may be given up")
	var lastError string
	require.NoError(t, tt.DB.QueryRow(context.Background(),
		"SELECT last_error FROM sync_state WHERE last_error IS NOT NULL ORDER BY last_error_at DESC LIMIT 1").Scan(&lastError))
	t.Logf("latency 1.5 s for %s: %d keys pending, %d with last_error (%q), %d sync jobs queued of which %d timed out and wait for their retry, longest running job %.2fs",
		time.Since(slow).Round(time.Millisecond), pending, failing, lastError, jobsQueued, requeued, longestRun)
	require.Positive(t, pending)
	require.Positive(t, failing)
	require.Positive(t, requeued, "timed-out jobs must be queued for retry")
	require.Zero(t, count(t, tt.DB, "SELECT count(*) FROM sync_state WHERE applied_at > $1", slow),
		"nothing can be applied through a link slower than the job timeout")

	// The link heals, delayed data still arriving; then every connection is
	// reset.
	proxy.SetLatency(0)
	healed := time.Now()
	require.Eventually(t, func() bool {
		return count(t, tt.DB, "SELECT count(*) FROM sync_state WHERE applied_at > $1", healed) > 0
	}, 20*time.Second, 10*time.Millisecond, "changes apply once the link heals")
	resets := proxy.ResetAll()
	w.waitAcked(t, 10, "traffic goes on after the resets")
	w.halt()
	t.Logf("traffic: %s; %d connections reset", &w.stats, resets)
	w.stats.checkNoViolations(t)
	took := drain(t, tt, 30*time.Second)
	t.Logf("converged %s after the latency was removed (%s after traffic stopped); %d jobs completed after a retry",
		time.Since(healed).Round(time.Millisecond), took.Round(time.Millisecond),
		count(t, tt.DB, "SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state = 'completed' AND attempt >= 2"))
	require.Positive(t, count(t, tt.DB, "SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state = 'completed' AND attempt >= 2"),
		"jobs that timed out must have been retried to completion")
	e := w.requireDatabase(t, tt.DB)
	requireSpiceDB(t, tt, w.pools, e)
}

// TestWorkerKilledMidBatch queues 200 connects, lets a worker process with
// 50 workers apply some and get stuck in SpiceDB writes with the rest, kills
// it with SIGKILL, changes some of those keys again, and attaches fresh
// workers with the production horizons (worker lease 5 s, River's rescue
// 2 min): the killed jobs are taken over once the dead process's lease has
// expired, everything converges within 15 s of the kill, and SpiceDB shows
// exactly the acknowledged changes.
func TestWorkerKilledMidBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// The helper group-commits as serve does: a few writes carry many jobs.
	const users, passWrites = 200, 2
	tt := testenv.StartTether(t, testenv.TetherOpts{NoWorkers: true})
	pools := setupPools(t, tt)
	for i := range users {
		tt.Connect(t, fmt.Sprintf("batch-%d", i), providerID)
	}

	marker := t.TempDir() + "/blocked"
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperWorkerEnv+"=1",
		"HELPER_DATABASE_URL="+tt.DB.Config().ConnString(),
		"HELPER_SPICEDB_ENDPOINT="+tt.SpiceConfig.Endpoint, "HELPER_SPICEDB_TOKEN="+tt.SpiceConfig.Token,
		"HELPER_MARKER="+marker, "HELPER_PASS_WRITES="+strconv.Itoa(passWrites), "HELPER_MAX_WORKERS=50")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out := &captureWriter{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	require.Eventually(t, func() bool { _, err := os.Stat(marker); return err == nil }, 30*time.Second, 10*time.Millisecond,
		"the helper worker never blocked a write; output: %s", out)
	// Let the batch fill the helper's 50 workers.
	require.Eventually(t, func() bool {
		return count(t, tt.DB, "SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state = 'running'") >= 40
	}, 15*time.Second, 10*time.Millisecond)
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	killed := time.Now()
	var running, completed, waiting int
	require.NoError(t, tt.DB.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'running'), count(*) FILTER (WHERE state = 'completed'),
		count(*) FILTER (WHERE state IN ('available','retryable','scheduled')) FROM river_job WHERE kind LIKE 'tether.sync_%'`).
		Scan(&running, &completed, &waiting))
	t.Logf("helper killed with %d jobs running (mid-write), %d completed, %d waiting", running, completed, waiting)
	require.GreaterOrEqual(t, running, 40)
	// Other workers are alive, as in production: they take the dead
	// process's jobs over once its lease expires, while the changes below
	// go on.
	testenv.AttachWorkers(t, tt, func(cfg *jobs.ClientConfig) {
		cfg.MaxWorkers = 20
		require.Equal(t, jobs.DefaultWorkerLeaseTTL, cfg.WorkerLeaseTTL)
		require.Equal(t, 2*time.Minute, cfg.RescueStuckJobsAfter)
	})
	takenOver := func() int {
		return count(t, tt.DB, `SELECT count(*) FROM river_job dead JOIN river_job r ON r.id = (dead.metadata->>'tether:replaced_by')::bigint
			WHERE dead.kind LIKE 'tether.sync_%' AND dead.state = 'cancelled' AND r.state = 'completed'`)
	}

	// While the killed jobs hang in "running", change some of their keys
	// (and others) again: every fourth user disconnects, every seventh
	// becomes a manual viewer.
	e := &expectation{viewers: map[viewerKey]bool{}, conns: map[string]bool{}, unknown: map[string]bool{}}
	rows, err := tt.DB.Query(ctx, "SELECT user_id, id FROM oauth2_connections")
	require.NoError(t, err)
	ids := map[string]uuid.UUID{}
	for rows.Next() {
		var u string
		var id uuid.UUID
		require.NoError(t, rows.Scan(&u, &id))
		ids[u] = id
	}
	require.NoError(t, rows.Err())
	for i := range users {
		u := fmt.Sprintf("batch-%d", i)
		e.users = append(e.users, u)
		e.conns[u] = true
		if i%4 == 0 {
			require.NoError(t, tt.Service.ConnectionDelete(ctx, &app.User{ID: u}, ids[u]))
			e.conns[u] = false
		}
		if i%7 == 0 {
			_, err := tt.Service.PoolViewerAdd(ctx, pools[2].ID, []app.PoolViewer{{ID: u}})
			require.NoError(t, err)
			e.viewers[viewerKey{pools[2].ID, u}] = true
		}
	}
	tt.WaitSynced(t, 30*time.Second)
	require.GreaterOrEqual(t, takenOver(), running, "every job the killed worker held must be taken over and completed")
	// When the last of them was applied, from River's own record.
	var lastApplied time.Time
	require.NoError(t, tt.DB.QueryRow(ctx, `SELECT max(r.finalized_at) FROM river_job dead
		JOIN river_job r ON r.id = (dead.metadata->>'tether:replaced_by')::bigint
		WHERE dead.kind LIKE 'tether.sync_%' AND dead.state = 'cancelled'`).Scan(&lastApplied))
	t.Logf("every job the killed worker held applied %s after the kill", lastApplied.Sub(killed).Round(time.Millisecond))
	require.Less(t, lastApplied.Sub(killed), 15*time.Second, "the changes the killed worker held must be applied within 15 s of its death")
	drain(t, tt, 15*time.Second)
	require.Zero(t, count(t, tt.DB, "SELECT count(*) FROM river_job WHERE metadata ? 'river:rescue_count'"), "nothing was left to River's rescuer")
	requireSpiceDB(t, tt, pools, e)
}

// TestWorkersStoppedMidWrite stops the workers the way `tether serve` does
// on SIGTERM once the soft half of TETHER_SHUTDOWN_TIMEOUT has passed
// (StopAndCancel) while a job hangs in a SpiceDB write. The cancelled job
// must be retried later, not given up: no cancelled job, no stalled key, and
// fresh workers apply the change.
func TestWorkersStoppedMidWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var proxy *faultproxy.Proxy
	tt := testenv.StartTether(t, testenv.TetherOpts{
		SpiceDB: throughProxy(t, &proxy),
		Client:  func(c *jobs.ClientConfig) { c.JobTimeout = 10 * time.Second; c.RescueStuckJobsAfter = 20 * time.Second },
	})
	pools := setupPools(t, tt)
	tt.WaitSynced(t, 15*time.Second)

	// One job of each kind hangs: the connection job in its write, the pool
	// job in its read of the pool's relationships (a stream).
	proxy.Stall()
	heldBefore := proxy.Held()
	tt.Connect(t, "alice", providerID)
	_, err := tt.Service.PoolViewerAdd(ctx, pools[2].ID, []app.PoolViewer{{ID: "bob"}})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return count(t, tt.DB, "SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state = 'running'") == 2
	}, 10*time.Second, 5*time.Millisecond)
	require.Eventually(t, func() bool { return proxy.Held() > heldBefore }, 10*time.Second, 5*time.Millisecond,
		"the jobs' SpiceDB calls reach the stalled proxy")
	stopCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	require.NoError(t, tt.River.StopAndCancel(stopCtx))
	cancel()
	proxy.Resume()

	var failures []string
	for _, key := range []struct{ kind, keyID, jobKind string }{
		{jobs.KeyKindConnection, jobs.ConnectionKeyID(providerID, "alice"), "tether.sync_connection"},
		{jobs.KeyKindPool, strconv.FormatInt(pools[2].ID, 10), "tether.sync_pool"},
	} {
		var state string
		require.NoError(t, tt.DB.QueryRow(ctx, "SELECT state FROM river_job WHERE kind = $1 ORDER BY id DESC LIMIT 1", key.jobKind).Scan(&state))
		st := tt.SyncState(t, key.kind, key.keyID)
		t.Logf("after StopAndCancel: %s job %s, key stalled=%v, last_error=%v", key.kind, state, st.Stalled, orNil(st.LastError))
		if state == "cancelled" || state == "discarded" || st.Stalled {
			failures = append(failures, fmt.Sprintf("%s key %s: job %s, stalled=%v, last_error=%q", key.kind, key.keyID, state, st.Stalled, orNil(st.LastError)))
		}
	}
	require.Empty(t, failures, "a job interrupted by a shutdown must be retried later, not given up as a permanent error")

	testenv.AttachWorkers(t, tt, nil)
	drain(t, tt, 15*time.Second)
	require.True(t, tt.CanView(t, "alice", pools[0].ID))
	require.True(t, tt.CanView(t, "bob", pools[2].ID))
}

func orNil(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// throughProxy routes the engine's SpiceDB connections through a fault
// proxy, stored in *proxy, closed when the test ends.
func throughProxy(t *testing.T, proxy **faultproxy.Proxy) func(*spicedb.Config) {
	return func(c *spicedb.Config) {
		p, err := faultproxy.New(c.Endpoint)
		require.NoError(t, err)
		t.Cleanup(func() { _ = p.Close() })
		c.Endpoint = p.Addr()
		*proxy = p
	}
}
