package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/devtools/oauthtest"
)

// storm is a mixed workload sent to an API process over HTTP by concurrent
// clients, each with users of its own: connects through the real OAuth2
// flow (authorize, the provider's login page, callback), disconnects,
// relinks and unlinks pools between providers, public on and off, manual
// grants and revocations. Every answer must be a success (or a 404 for
// something another client removed first): the API never depends on a
// worker being alive.
type storm struct {
	api       string
	op        *oauthtest.Provider
	admin     string
	pools     []int64
	providers []string

	acked  atomic.Int64
	mu     sync.Mutex
	failed []string
	stop   chan struct{}
	halted sync.Once
	wg     sync.WaitGroup
}

const stormUsersPerClient = 4

func newStorm(t *testing.T, api string, op *oauthtest.Provider, pools []int64, providers []string) *storm {
	return &storm{api: api, op: op, admin: adminToken(t), pools: pools, providers: providers, stop: make(chan struct{})}
}

func (s *storm) start(t *testing.T, clients int) {
	for i := range clients {
		c := &stormClient{s: s, rng: rand.New(rand.NewPCG(uint64(i), 15)), browsers: map[string]*http.Client{}, tokens: map[string]string{}}
		for j := range stormUsersPerClient {
			user := fmt.Sprintf("storm-%d-%d", i, j)
			c.users = append(c.users, user)
			c.browsers[user], c.tokens[user] = browser(t, s.api, user)
		}
		s.wg.Add(1)
		go c.run()
	}
}

// halt stops the clients and waits for their last requests; it may be
// called more than once.
func (s *storm) halt() {
	s.halted.Do(func() { close(s.stop) })
	s.wg.Wait()
}

// waitAcked waits until n more operations were acknowledged, failing the
// test after d.
func (s *storm) waitAcked(t *testing.T, n int64, d time.Duration, why string) {
	t.Helper()
	target := s.acked.Load() + n
	deadline := time.Now().Add(d)
	for s.acked.Load() < target {
		if time.Now().After(deadline) {
			t.Fatalf("storm: %d of %d operations acknowledged after %s (%s); failures: %v", s.acked.Load(), target, d, why, s.failures())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (s *storm) fail(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failed) < 50 { // enough to see what went wrong
		s.failed = append(s.failed, fmt.Sprintf(format, args...))
	}
}

func (s *storm) failures() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.failed...)
}

// browser is an HTTP client signed in as user (the auth cookie) that never
// follows redirects, and user's bearer token.
func browser(t *testing.T, base, user string) (*http.Client, string) {
	t.Helper()
	tok, err := app.SignDevToken([]byte(testSecret), user, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	jar.SetCookies(u, []*http.Cookie{{Name: "tether_token", Value: tok, Path: "/"}})
	return &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}, tok
}

type stormClient struct {
	s        *storm
	rng      *rand.Rand
	users    []string
	browsers map[string]*http.Client
	tokens   map[string]string
}

func (c *stormClient) run() {
	defer c.s.wg.Done()
	for {
		select {
		case <-c.s.stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		op, err := c.one(ctx)
		cancel()
		if err != nil {
			c.s.fail("%s: %v", op, err)
			continue
		}
		c.s.acked.Add(1)
	}
}

// one runs one random operation.
func (c *stormClient) one(ctx context.Context) (string, error) {
	user := c.users[c.rng.IntN(len(c.users))]
	pool := c.s.pools[c.rng.IntN(len(c.s.pools))]
	provider := c.s.providers[c.rng.IntN(len(c.s.providers))]
	poolPath := fmt.Sprintf("/api/data/resource_pools/%d", pool)
	switch n := c.rng.IntN(10); {
	case n < 3:
		return "connect", c.connect(ctx, user, provider)
	case n < 5:
		return "disconnect", c.disconnect(ctx, user)
	case n == 5:
		return "relink", c.send(ctx, http.MethodPatch, poolPath, c.s.admin, map[string]any{"remote": map[string]string{"provider_id": provider}})
	case n == 6:
		return "unlink", c.send(ctx, http.MethodPatch, poolPath, c.s.admin, map[string]any{"remote": nil})
	case n == 7:
		return "public", c.send(ctx, http.MethodPatch, poolPath, c.s.admin, map[string]any{"public": c.rng.IntN(2) == 0})
	case n == 8:
		return "grant", c.send(ctx, http.MethodPost, poolPath+"/users", c.s.admin, []map[string]string{{"id": user}})
	default:
		return "revoke", c.send(ctx, http.MethodDelete, poolPath+"/users/"+url.PathEscape(user), c.s.admin, nil)
	}
}

// connect runs the OAuth2 flow as a browser does.
func (c *stormClient) connect(ctx context.Context, user, provider string) error {
	b := c.browsers[user]
	resp, err := get(ctx, b, c.s.api+"/api/data/oauth2/providers/"+provider+"/authorize?next_url=/ui/")
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusFound {
		return fmt.Errorf("authorize: HTTP %d", resp.StatusCode)
	}
	cb, err := c.s.op.Login(ctx, b, resp.Header.Get("Location"), c.s.op.Users[0])
	if err != nil {
		return fmt.Errorf("provider login: %w", err)
	}
	if resp, err = get(ctx, b, cb.String()); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusFound {
		return fmt.Errorf("callback: HTTP %d", resp.StatusCode)
	}
	return nil
}

// disconnect removes one of user's connections, if any.
func (c *stormClient) disconnect(ctx context.Context, user string) error {
	var conns []app.Connection
	if err := c.call(ctx, http.MethodGet, "/api/data/oauth2/connections", c.tokens[user], nil, &conns); err != nil {
		return err
	}
	if len(conns) == 0 {
		return nil
	}
	return c.send(ctx, http.MethodDelete, "/api/data/oauth2/connections/"+conns[c.rng.IntN(len(conns))].ID.String(), c.tokens[user], nil)
}

// send makes an API call whose answer must be a success or a 404 (another
// client removed the thing first).
func (c *stormClient) send(ctx context.Context, method, path, token string, body any) error {
	err := c.call(ctx, method, path, token, body, nil)
	var status httpStatusError
	if asStatus(err, &status) && status.code == http.StatusNotFound && status.errCode == app.ENOTFOUND {
		return nil
	}
	return err
}

type httpStatusError struct {
	code    int
	errCode string
	body    string
}

func (e httpStatusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.body) }

func asStatus(err error, target *httpStatusError) bool {
	s, ok := err.(httpStatusError)
	if ok {
		*target = s
	}
	return ok
}

func (c *stormClient) call(ctx context.Context, method, path, token string, body, out any) error {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.s.api+path, r)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return httpStatusError{code: resp.StatusCode, errCode: errorCode(data), body: strings.TrimSpace(string(data))}
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

func get(ctx context.Context, client *http.Client, rawURL string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}
