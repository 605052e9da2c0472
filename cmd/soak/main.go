// Command soak drives mixed traffic against a `tether serve` process on a
// local stack for SOAK_DURATION (default 5m): disconnects, manual grants and
// revocations, pool changes and reads. It fails on any 5xx, on drift after
// the traffic drains (`tether reconcile --dry-run`), and when the server's
// memory keeps growing after warm-up; it prints RSS at start, middle and end.
// Run it with `make soak`; it needs bin/tether and bin/spicedb.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/devtools/devstack"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		log.Fatalf("soak: %v", err)
	}
}

func run(ctx context.Context) error {
	duration, err := soakDuration()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "tether-soak-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	_ = os.Chmod(dir, 0o755)
	stack, err := devstack.Start(ctx, devstack.Options{Dir: dir, Logf: log.Printf})
	if err != nil {
		return err
	}
	defer stack.Stop()
	srv, err := startServer(ctx, stack)
	if err != nil {
		return err
	}
	defer srv.stop()
	pool, err := pgxpool.New(ctx, stack.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	conns, err := loadFixtures(ctx, srv, pool)
	if err != nil {
		return err
	}
	t := &traffic{srv: srv, conns: conns}
	st := t.drive(ctx, duration, srv.cmd.Process.Pid)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return verdict(ctx, srv, pool, duration, st)
}

// soakDuration is SOAK_DURATION, default 5m.
func soakDuration() (time.Duration, error) {
	v := os.Getenv("SOAK_DURATION")
	if v == "" {
		return 5 * time.Minute, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("SOAK_DURATION: %w", err)
	}
	return d, nil
}

// server is the `tether serve` process under test; command runs other tether
// commands against the same stores.
type server struct {
	env    []string
	base   string // http://host:port
	secret string // the HMAC secret the dev tokens are signed with
	admin  string // an admin's bearer token
	cmd    *exec.Cmd
}

// startServer migrates the stack's stores and starts `tether serve` on a
// free port, returning once it answers /healthz.
func startServer(ctx context.Context, stack *devstack.Stack) (*server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	s := &server{base: "http://" + addr, secret: devstack.RandomSecret()}
	s.env = append(os.Environ(), "TETHER_DATABASE_URL="+stack.DatabaseURL, "TETHER_SPICEDB_ENDPOINT="+stack.SpiceDBEndpoint,
		"TETHER_SPICEDB_TOKEN="+stack.SpiceDBToken, "TETHER_SPICEDB_INSECURE=true", "TETHER_HTTP_ADDR="+addr,
		"TETHER_AUTH_HMAC_SECRET="+s.secret, "TETHER_ENCRYPTION_KEYS=soak:"+devstack.StdBase64(devstack.RandomSecret()),
		"TETHER_LOG_LEVEL=warn", "TETHER_RECONCILE_INTERVAL=1m")
	if s.admin, err = app.SignDevToken([]byte(s.secret), "soak-admin", []string{"tether-admin"}, 24*time.Hour); err != nil {
		return nil, err
	}
	if out, err := s.command(ctx, "migrate", "up").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("migrate: %w\n%s", err, out)
	}
	s.cmd = s.command(ctx, "serve")
	s.cmd.Stdout, s.cmd.Stderr = os.Stderr, os.Stderr
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, s.base+"/healthz"); err != nil {
		s.stop()
		return nil, err
	}
	return s, nil
}

func (s *server) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "bin/tether", args...)
	cmd.Env = s.env
	return cmd
}

func (s *server) stop() { _ = s.cmd.Process.Signal(syscall.SIGTERM); _ = s.cmd.Wait() }

// Fixture sizes: the pools the traffic edits and the connected users it
// disconnects and reads as.
const (
	fixturePools = 20
	fixtureUsers = 200_000
)

// loadFixtures makes two providers, pools linked to them (and some to none),
// and connected users, loaded straight into Postgres (connections are made
// by the OAuth2 flow, which the browser tests cover); an initial reconcile
// projects them into SpiceDB. It returns the connections in random order.
func loadFixtures(ctx context.Context, s *server, pool *pgxpool.Pool) ([]connection, error) {
	for _, p := range []string{"alpha", "beta"} {
		if code := call(ctx, "POST", s.base+"/api/data/oauth2/providers", s.admin, `{"id":"`+p+`","kind":"github","display_name":"`+p+`","client_id":"c"}`); code != 201 {
			return nil, fmt.Errorf("creating provider %s: %d", p, code)
		}
	}
	for i := range fixturePools {
		link := []string{"alpha", "beta", ""}[i%3]
		remote := "null"
		if link != "" {
			remote = `{"provider_id":"` + link + `"}`
		}
		if code := call(ctx, "POST", s.base+"/api/data/resource_pools", s.admin, fmt.Sprintf(`{"name":"pool-%d","remote":%s,"public":%t}`, i, remote, i%7 == 0)); code != 201 {
			return nil, fmt.Errorf("creating pool: %d", code)
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO oauth2_connections (user_id, provider_id, status)
		SELECT 'u' || g, CASE WHEN g % 2 = 0 THEN 'alpha' ELSE 'beta' END, 'connected' FROM generate_series(1, $1) g`, fixtureUsers); err != nil {
		return nil, err
	}
	if out, err := s.command(ctx, "reconcile").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initial reconcile: %w\n%s", err, out)
	}
	return connectionIDs(ctx, pool)
}

// verdict lets the workers and the periodic reconcile drain what the
// traffic left, prints the figures, and fails on drift, on any server error
// and on memory that kept growing after warm-up.
func verdict(ctx context.Context, s *server, pool *pgxpool.Pool, duration time.Duration, st *stats) error {
	// Drain: the periodic reconcile and the workers catch up, then nothing may differ.
	if err := waitDrained(ctx, pool, 3*time.Minute); err != nil {
		return err
	}
	out, err := s.command(ctx, "reconcile", "--dry-run").CombinedOutput()
	requests, fivexx := st.requests.Load(), st.fivexx.Load()
	fmt.Printf("\nsoak: %s, %d requests (%.0f/s), %d server errors\n", duration, requests, float64(requests)/duration.Seconds(), fivexx)
	fmt.Printf("tether RSS: start %d MB, middle %d MB, end %d MB\n", st.rss.start/1024, st.rss.middle/1024, st.rss.end/1024)
	fmt.Printf("reconcile --dry-run after drain:\n%s\n", out)
	var problems []string
	if err != nil {
		problems = append(problems, "drift after drain")
	}
	if fivexx > 0 {
		problems = append(problems, fmt.Sprintf("%d server errors", fivexx))
	}
	// Flat after warm-up: the end may exceed the middle by at most 25%.
	if st.rss.middle > 0 && float64(st.rss.end) > 1.25*float64(st.rss.middle) {
		problems = append(problems, fmt.Sprintf("memory grew after warm-up: %d → %d MB", st.rss.middle/1024, st.rss.end/1024))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	fmt.Println("soak: passed")
	return nil
}

type connection struct{ id, user string }

func connectionIDs(ctx context.Context, pool *pgxpool.Pool) ([]connection, error) {
	rows, err := pool.Query(ctx, "SELECT id::text, user_id FROM oauth2_connections ORDER BY random()")
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (connection, error) {
		var c connection
		return c, r.Scan(&c.id, &c.user)
	})
}

func waitDrained(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var pending, left int64
		if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM sync_state WHERE applied_generation < generation),
			(SELECT count(*) FROM river_job WHERE kind LIKE 'tether.sync_%' AND state IN ('available','running','retryable','scheduled'))`).Scan(&pending, &left); err != nil {
			return err
		}
		if pending == 0 && left == 0 {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("not drained after %s", timeout)
}

var client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

func call(ctx context.Context, method, url, token, body string) int {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, r)
	if err != nil {
		return 0
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func waitHTTP(ctx context.Context, url string) error {
	for range 200 {
		if call(ctx, "GET", url, "", "") == 200 {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer", url)
}

func rssKB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				n, _ := strconv.ParseInt(f[1], 10, 64)
				return n
			}
		}
	}
	return 0
}
