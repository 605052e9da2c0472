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
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
	duration := 5 * time.Minute
	if v := os.Getenv("SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("SOAK_DURATION: %w", err)
		}
		duration = d
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
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	secret := devstack.RandomSecret()
	env := append(os.Environ(), "TETHER_DATABASE_URL="+stack.DatabaseURL, "TETHER_SPICEDB_ENDPOINT="+stack.SpiceDBEndpoint,
		"TETHER_SPICEDB_TOKEN="+stack.SpiceDBToken, "TETHER_SPICEDB_INSECURE=true", "TETHER_HTTP_ADDR="+addr,
		"TETHER_AUTH_HMAC_SECRET="+secret, "TETHER_ENCRYPTION_KEYS=soak:"+devstack.StdBase64(devstack.RandomSecret()),
		"TETHER_LOG_LEVEL=warn", "TETHER_RECONCILE_INTERVAL=1m")
	tether := func(args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, "bin/tether", args...)
		cmd.Env = env
		return cmd
	}
	if out, err := tether("migrate", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("migrate: %w\n%s", err, out)
	}
	server := tether("serve")
	server.Stdout, server.Stderr = os.Stderr, os.Stderr
	if err := server.Start(); err != nil {
		return err
	}
	defer func() { _ = server.Process.Signal(syscall.SIGTERM); _ = server.Wait() }()
	base := "http://" + addr
	if err := waitHTTP(ctx, base+"/healthz"); err != nil {
		return err
	}
	admin, err := app.SignDevToken([]byte(secret), "soak-admin", []string{"tether-admin"}, 24*time.Hour)
	if err != nil {
		return err
	}
	// Fixtures: two providers, pools linked to them, and connected users
	// loaded straight into Postgres (connections are made by the OAuth2
	// flow, which the browser tests cover).
	for _, p := range []string{"alpha", "beta"} {
		if code := call(ctx, "POST", base+"/api/data/oauth2/providers", admin, `{"id":"`+p+`","kind":"github","display_name":"`+p+`","client_id":"c"}`); code != 201 {
			return fmt.Errorf("creating provider %s: %d", p, code)
		}
	}
	for i := range 20 {
		link := []string{"alpha", "beta", ""}[i%3]
		remote := "null"
		if link != "" {
			remote = `{"provider_id":"` + link + `"}`
		}
		if code := call(ctx, "POST", base+"/api/data/resource_pools", admin, fmt.Sprintf(`{"name":"pool-%d","remote":%s,"public":%t}`, i, remote, i%7 == 0)); code != 201 {
			return fmt.Errorf("creating pool: %d", code)
		}
	}
	pool, err := pgxpool.New(ctx, stack.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	const users = 200_000
	if _, err := pool.Exec(ctx, `INSERT INTO oauth2_connections (user_id, provider_id, status)
		SELECT 'u' || g, CASE WHEN g % 2 = 0 THEN 'alpha' ELSE 'beta' END, 'connected' FROM generate_series(1, $1) g`, users); err != nil {
		return err
	}
	if out, err := tether("reconcile").CombinedOutput(); err != nil {
		return fmt.Errorf("initial reconcile: %w\n%s", err, out)
	}
	ids, err := connectionIDs(ctx, pool)
	if err != nil {
		return err
	}

	var requests, fivexx atomic.Int64
	var nextConn atomic.Int64
	tokens := sync.Map{}
	token := func(user string) string {
		if t, ok := tokens.Load(user); ok {
			return t.(string)
		}
		t, _ := app.SignDevToken([]byte(secret), user, nil, 24*time.Hour)
		tokens.Store(user, t)
		return t
	}
	op := func(rng *rand.Rand) int {
		switch r := rng.IntN(100); {
		case r < 35: // disconnect
			i := int(nextConn.Add(1)) % len(ids)
			c := ids[i]
			return call(ctx, "DELETE", base+"/api/data/oauth2/connections/"+c.id, token(c.user), "")
		case r < 55:
			return call(ctx, "GET", base+"/api/data/resource_pools", token(fmt.Sprintf("u%d", rng.IntN(users)+1)), "")
		case r < 65:
			return call(ctx, "GET", base+"/api/data/oauth2/connections", token(fmt.Sprintf("u%d", rng.IntN(users)+1)), "")
		case r < 80:
			return call(ctx, "POST", fmt.Sprintf("%s/api/data/resource_pools/%d/users", base, rng.IntN(20)+1), admin, fmt.Sprintf(`[{"id":"v%d"}]`, rng.IntN(500)))
		case r < 90:
			code := call(ctx, "DELETE", fmt.Sprintf("%s/api/data/resource_pools/%d/users/v%d", base, rng.IntN(20)+1, rng.IntN(500)), admin, "")
			if code == 404 {
				return 204 // not a viewer at the moment: fine
			}
			return code
		case r < 97:
			link := []string{`{"provider_id":"alpha"}`, `{"provider_id":"beta"}`, "null"}[rng.IntN(3)]
			return call(ctx, "PATCH", fmt.Sprintf("%s/api/data/resource_pools/%d", base, rng.IntN(20)+1), admin, `{"remote":`+link+`}`)
		default:
			return call(ctx, "GET", base+"/metrics", "", "")
		}
	}
	rss := map[string]int64{}
	start := time.Now()
	soakCtx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for soakCtx.Err() == nil {
				code := op(rng)
				requests.Add(1)
				if code >= 500 || code == 0 {
					if soakCtx.Err() == nil {
						fivexx.Add(1)
						log.Printf("server error %d", code)
					}
				}
				time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
			}
		}()
	}
	samples := []int64{}
	ticker := time.NewTicker(duration / 20)
	defer ticker.Stop()
	rss["start"] = rssKB(server.Process.Pid)
loop:
	for {
		select {
		case <-soakCtx.Done():
			break loop
		case <-ticker.C:
			kb := rssKB(server.Process.Pid)
			samples = append(samples, kb)
			if len(samples) == 10 {
				rss["middle"] = kb
			}
			log.Printf("%s: %d requests, %d 5xx, tether RSS %d MB", time.Since(start).Round(time.Second), requests.Load(), fivexx.Load(), kb/1024)
		}
	}
	wg.Wait()
	rss["end"] = rssKB(server.Process.Pid)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	// Drain: the periodic reconcile and the workers catch up, then nothing may differ.
	if err := waitDrained(ctx, pool, 3*time.Minute); err != nil {
		return err
	}
	dry := tether("reconcile", "--dry-run")
	out, err := dry.CombinedOutput()
	fmt.Printf("\nsoak: %s, %d requests (%.0f/s), %d server errors\n", duration, requests.Load(), float64(requests.Load())/duration.Seconds(), fivexx.Load())
	fmt.Printf("tether RSS: start %d MB, middle %d MB, end %d MB\n", rss["start"]/1024, rss["middle"]/1024, rss["end"]/1024)
	fmt.Printf("reconcile --dry-run after drain:\n%s\n", out)
	var problems []string
	if err != nil {
		problems = append(problems, "drift after drain")
	}
	if fivexx.Load() > 0 {
		problems = append(problems, fmt.Sprintf("%d server errors", fivexx.Load()))
	}
	// Flat after warm-up: the end may exceed the middle by at most 25%.
	if rss["middle"] > 0 && float64(rss["end"]) > 1.25*float64(rss["middle"]) {
		problems = append(problems, fmt.Sprintf("memory grew after warm-up: %d → %d MB", rss["middle"]/1024, rss["end"]/1024))
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
