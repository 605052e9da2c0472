package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/devtools/devstack"
	tengine "github.com/tetherhq/tether/internal/engine"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
	"github.com/tetherhq/tether/migrations"
)

// bench owns the local Postgres cluster; scenarios get databases and SpiceDB
// servers of their own from it.
type bench struct {
	full            bool
	dir             string
	stack           *devstack.Stack
	postgresVersion string
	keys            *keyring.Ring
	keySpec         string // keys as TETHER_ENCRYPTION_KEYS (for worker processes)
	secret          []byte
	// cdfs are latency CDFs by plot (a file name suffix), in the order added.
	cdfs     map[string][]cdfSeries
	cdfOrder []string
	// costs are the cost tables the scenarios measured.
	costs     []*CostTable
	dbCounter int
	// rawCeiling is the best raw pgx write rate of scenario 1, the
	// machine's own limit for the write path.
	rawCeiling float64
	// spiceSingle and spiceBatched are SpiceDB's own write rates (scenario 0).
	spiceSingle, spiceBatched float64
}

const benchSecret = "bench-secret-bench-secret-bench-secret"

func newBench(ctx context.Context, full bool) (*bench, error) {
	dir, err := os.MkdirTemp("", "tether-bench-*")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	// fsync stays on: commits cost what they cost in production.
	stack, err := devstack.Start(ctx, devstack.Options{Dir: dir, SkipSpiceDB: true})
	if err != nil {
		return nil, err
	}
	keySpec := "bench:" + devstack.StdBase64(devstack.RandomSecret())
	keys, err := keyring.Parse(keySpec)
	if err != nil {
		return nil, err
	}
	b := &bench{full: full, dir: dir, stack: stack, keys: keys, keySpec: keySpec, secret: []byte(benchSecret)}
	conn, err := pgx.Connect(ctx, stack.AdminURL)
	if err == nil {
		_ = conn.QueryRow(ctx, "SHOW server_version").Scan(&b.postgresVersion)
		conn.Close(ctx)
	}
	return b, nil
}

func (b *bench) close() {
	b.stack.Stop()
	os.RemoveAll(b.dir)
}

// database creates a fresh database; migrate runs Tether's and River's migrations.
func (b *bench) database(ctx context.Context, migrate bool) (string, error) {
	b.dbCounter++
	name := fmt.Sprintf("bench_%d", b.dbCounter)
	conn, err := pgx.Connect(ctx, b.stack.AdminURL)
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", err
	}
	u := strings.Replace(b.stack.AdminURL, "/postgres?", "/"+name+"?", 1)
	if migrate {
		pool, err := pgxpool.New(ctx, u)
		if err != nil {
			return "", err
		}
		defer pool.Close()
		m, err := migrations.New(pool)
		if err != nil {
			return "", err
		}
		defer m.Close()
		if _, err := m.Up(ctx); err != nil {
			return "", err
		}
	}
	return u, nil
}

// spicedbDatabase creates a database and migrates it as SpiceDB's
// datastore; it returns SpiceDB's binary and the database's URL.
func (b *bench) spicedbDatabase(ctx context.Context) (bin, uri string, err error) {
	if bin, err = devstack.SpiceDBBin(); err != nil {
		return "", "", err
	}
	if uri, err = b.database(ctx, false); err != nil {
		return "", "", err
	}
	if out, err := exec.CommandContext(ctx, bin, "datastore", "migrate", "head", "--skip-release-check",
		"--datastore-engine", "postgres", "--datastore-conn-uri", uri).CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("error migrating SpiceDB: %w\n%s", err, out)
	}
	return bin, uri, nil
}

// spiceProcess is a SpiceDB server on its own database.
type spiceProcess struct {
	bin, endpoint, token string
	dbURL                string // its datastore
	metricsAddr          string // its Prometheus metrics (the cost table counts its calls)
	args                 []string
	cmd                  *exec.Cmd
	logPath              string
}

func (b *bench) spicedb(ctx context.Context) (*spiceProcess, error) {
	bin, uri, err := b.spicedbDatabase(ctx)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	endpoint := l.Addr().String()
	l.Close()
	ml, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	metricsAddr := ml.Addr().String()
	ml.Close()
	p := &spiceProcess{bin: bin, endpoint: endpoint, token: devstack.RandomSecret(), dbURL: uri, metricsAddr: metricsAddr,
		logPath: filepath.Join(b.dir, fmt.Sprintf("spicedb-%d.log", b.dbCounter))}
	p.args = []string{"serve", "--skip-release-check", "--telemetry-endpoint=", "--grpc-preshared-key", p.token,
		"--datastore-engine", "postgres", "--datastore-conn-uri", uri, "--grpc-addr", endpoint,
		"--http-enabled=false", "--dispatch-cluster-enabled=false", "--metrics-enabled=true", "--metrics-addr", metricsAddr}
	return p, p.start()
}

func (p *spiceProcess) start() error {
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	p.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", p.endpoint, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("SpiceDB did not start (log %s)", p.logPath)
}

func (p *spiceProcess) stop() {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		p.cmd = nil
	}
}

func (p *spiceProcess) config() spicedb.Config {
	return spicedb.Config{Endpoint: p.endpoint, Token: p.token, Insecure: true}
}

// engineOpts choose how a Tether engine is tuned.
type engineOpts struct {
	workers       bool
	riverDefaults bool // River's FetchCooldown 100 ms / FetchPollInterval 1 s, no group commit, no hand-off
	http          bool
	maxWorkers    int
	noHeal        bool // no watcher, restores or reschedules (a baseline without them)
}

// engine is Tether in-process, wired as `tether serve` wires it (by the
// engine package), with the fields the scenarios use at hand.
type engine struct {
	b          *bench
	tether     *tengine.Engine
	cfg        *config.Config
	db         *pgxpool.Pool
	dbURL      string
	spice      *spicedb.Client
	proc       *spiceProcess
	reconciler *jobs.Reconciler
	river      *river.Client[pgx.Tx]
	svc        *app.Service
	url        string
	applied    sync.Map // "kind/keyID" → func(token string)
	opts       engineOpts
	closers    []func()
}

func (b *bench) engine(ctx context.Context, o engineOpts) (*engine, error) {
	dbURL, err := b.database(ctx, true)
	if err != nil {
		return nil, err
	}
	proc, err := b.spicedb(ctx)
	if err != nil {
		return nil, err
	}
	e := &engine{b: b, dbURL: dbURL, proc: proc, opts: o}
	e.closers = append(e.closers, proc.stop)
	e.cfg, err = b.config(dbURL, proc, o)
	if err != nil {
		return nil, err
	}
	role := tengine.RoleCLI
	switch {
	case o.workers && o.http:
		role = tengine.RoleAll
	case o.workers:
		role = tengine.RoleWorker
	case o.http:
		role = tengine.RoleAPI
	}
	if e.tether, err = e.start(ctx, role); err != nil {
		e.close()
		return nil, err
	}
	t := e.tether
	e.db, e.spice, e.reconciler, e.river, e.svc = t.DB, t.SpiceDB, t.Reconciler, t.River, t.Service
	if err := e.spice.WriteSchema(ctx); err != nil {
		e.close()
		return nil, err
	}
	if o.http {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			e.close()
			return nil, err
		}
		hs := &http.Server{Handler: t.Handler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = hs.Serve(l) }()
		e.url = "http://" + l.Addr().String()
		e.closers = append(e.closers, func() { _ = hs.Close() })
	}
	return e, nil
}

// config is a bench engine's configuration: production's defaults, the
// scenario's stores, no periodic reconcile.
func (b *bench) config(dbURL string, proc *spiceProcess, o engineOpts) (*config.Config, error) {
	cfg := config.Defaults()
	cfg.DatabaseURL = dbURL
	sc := proc.config()
	cfg.SpiceDBEndpoint, cfg.SpiceDBToken, cfg.SpiceDBInsecure = sc.Endpoint, sc.Token, sc.Insecure
	cfg.EncryptionKeys = b.keys
	cfg.AuthHMACSecret = b.secret
	cfg.ReconcileInterval = 0
	cfg.WriteFlushers = flushers()
	if v := os.Getenv("TETHER_SYNC_HANDOFF_GRACE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return nil, fmt.Errorf("TETHER_SYNC_HANDOFF_GRACE: %w", err)
		}
		cfg.HandOffGrace = d
	}
	if o.maxWorkers > 0 {
		cfg.MaxWorkers = o.maxWorkers
	}
	if o.riverDefaults {
		cfg.FetchCooldown, cfg.FetchPollInterval = 100*time.Millisecond, time.Second
		cfg.WriteFlushers = 0
		cfg.HandOffGrace = 0
	}
	return &cfg, nil
}

// start builds and starts a Tether engine for role on the bench engine's
// stores; it is stopped by close.
func (e *engine) start(ctx context.Context, role tengine.Role) (*tengine.Engine, error) {
	t, err := tengine.New(ctx, e.cfg, tengine.Options{
		Role: role, PoolConfig: poolKnobs, CancelJobsOnStop: true, OAuthTimeout: 5 * time.Second,
		Client: func(c *jobs.ClientConfig) {
			c.Heal.Enabled = !e.opts.noHeal
			if n, err := strconv.Atoi(os.Getenv("BENCH_HANDOFF_SLOTS")); err == nil {
				c.HandOff.Slots = n
			}
		},
		OnApplied: func(kind, keyID, token string, writtenAt time.Time) {
			if f, ok := e.applied.Load(kind + "/" + keyID); ok {
				f.(func(string, time.Time))(token, writtenAt)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = t.Stop(stopCtx)
	})
	if err := t.Start(ctx); err != nil {
		return nil, err
	}
	return t, nil
}

// poolKnobs size the pool: 60 connections, and knobs to measure two
// settings against pgx's defaults (the note on issue 6 has the figures):
// BENCH_MAX_CONNS (pgxpool's default is 4 on two cores) and
// BENCH_PGX_EXEC_MODE=exec|simple_protocol (the default caches prepared
// statements). A bad knob is a bench bug: it panics at the first engine.
func poolKnobs(cfg *pgxpool.Config) {
	cfg.MaxConns = 60
	if v := os.Getenv("BENCH_MAX_CONNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			panic(fmt.Sprintf("BENCH_MAX_CONNS: %v", err))
		}
		cfg.MaxConns = int32(n)
	}
	switch os.Getenv("BENCH_PGX_EXEC_MODE") {
	case "":
	case "exec":
		cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
	case "simple_protocol":
		cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	default:
		panic("BENCH_PGX_EXEC_MODE: want exec or simple_protocol")
	}
}

func (e *engine) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
}

// onApplied registers a callback for a key's next application.
func (e *engine) onApplied(kind, keyID string, f func(token string, writtenAt time.Time)) {
	e.applied.Store(kind+"/"+keyID, f)
}

// waitSynced waits until no key has an unapplied change and no sync job is left.
func (e *engine) waitSynced(ctx context.Context, timeout time.Duration) error {
	return e.wait(ctx, timeout, true)
}

// waitApplied waits until no key has an unapplied change; jobs may be left
// (the outbox of changes handed off, which find their key applied).
func (e *engine) waitApplied(ctx context.Context, timeout time.Duration) error {
	return e.wait(ctx, timeout, false)
}

func (e *engine) wait(ctx context.Context, timeout time.Duration, jobs bool) error {
	deadline := time.Now().Add(timeout)
	for {
		// Probes that stop at the first row (the pending keys' partial
		// index, River's fetch index): a count over sync_state and
		// river_job every few milliseconds costs a core once the tables
		// are large, and slows the drain it waits for.
		var pending, left bool
		err := e.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM sync_state WHERE pending_since IS NOT NULL),
			$1::bool AND EXISTS (SELECT 1 FROM river_job WHERE state IN ('available','running','retryable','scheduled','pending') AND kind LIKE 'tether.sync_%')`,
			jobs).Scan(&pending, &left)
		if err != nil {
			return err
		}
		if !pending && !left {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not synced after %s (keys pending: %t, jobs left: %t)", timeout, pending, left)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (e *engine) token(sub string, admin bool) string {
	var roles []string
	if admin {
		roles = []string{"tether-admin"}
	}
	t, err := app.SignDevToken(e.b.secret, sub, roles, 2*time.Hour)
	if err != nil {
		panic(err)
	}
	return t
}

// startWorkers starts a worker engine on an engine built without one.
func (e *engine) startWorkers(ctx context.Context) error {
	_, err := e.start(ctx, tengine.RoleWorker)
	return err
}

// flushers is the group commit's concurrency (TETHER_SPICEDB_WRITE_FLUSHERS,
// default 4 as in serve).
func flushers() int {
	if n, err := strconv.Atoi(os.Getenv("TETHER_SPICEDB_WRITE_FLUSHERS")); err == nil && n > 0 {
		return n
	}
	return 4
}
