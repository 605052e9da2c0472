// Package engine builds and owns everything a Tether process runs — the
// Postgres pool, the SpiceDB client, the syncer and its batcher, the River
// client, the service and the HTTP server — for one role. It is the only
// place Tether is wired: serve, the CLI, the tests, e2e, the soak and the
// bench all get their engine here, and tune it through Options only.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/riverqueue/river"
	"go.opentelemetry.io/otel/trace"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// Role says what a process runs.
type Role string

const (
	// RoleAll serves HTTP and works jobs (`tether serve`).
	RoleAll Role = "all"
	// RoleAPI serves HTTP; its River client only inserts.
	RoleAPI Role = "api"
	// RoleWorker works jobs; HTTP serves only probes and metrics.
	RoleWorker Role = "worker"
	// RoleCLI builds the stores, the service and the reconciler with an
	// insert-only River client and no HTTP (migrate, reconcile, status, keys).
	RoleCLI Role = "cli"
)

// ParseRole reads a --role flag.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleAll, RoleAPI, RoleWorker:
		return r, nil
	}
	return "", fmt.Errorf("--role must be api, worker or all, got %q", s)
}

func (r Role) works() bool { return r == RoleAll || r == RoleWorker }

func (r Role) servesHTTP() bool { return r != RoleCLI }

func (r Role) servesAPI() bool { return r == RoleAll || r == RoleAPI }

// Options tune an engine. The zero value is production's `serve` without a
// listener.
type Options struct {
	Role Role // default RoleAll
	// Logger receives Tether's logs; RiverLogger River's (default: Logger).
	Logger      *slog.Logger
	RiverLogger *slog.Logger
	// Registry receives the metrics; default: a new one with the Go and
	// process collectors.
	Registry *prometheus.Registry
	// Listen makes Start listen on TETHER_HTTP_ADDR; without it the HTTP
	// handler is only available through Handler (tests serve it themselves).
	Listen bool
	// CheckMigrations refuses a database whose migrations are behind;
	// CheckSpiceDB refuses an unreachable SpiceDB. Both name the variable.
	CheckMigrations bool
	CheckSpiceDB    bool
	// PoolConfig and SpiceDB adjust the connections (tests inject SpiceDB
	// faults through dial options; the bench sizes the pool).
	PoolConfig func(*pgxpool.Config)
	SpiceDB    func(*spicedb.Config)
	// Client adjusts the River client (tests shorten timings).
	Client func(*jobs.ClientConfig)
	// OnApplied observes every applied change (the bench times the pipeline).
	OnApplied func(kind, keyID, zedToken string, writtenAt time.Time)
	// CancelJobsOnStop cancels running jobs at Stop instead of letting them
	// finish (tests that end with SpiceDB unreachable).
	CancelJobsOnStop bool
	// OAuthTimeout bounds each call to a provider (default 10 s).
	OAuthTimeout time.Duration
	// TracerProvider traces the process (tests pass an SDK provider with an
	// in-memory exporter). Without it the engine exports over OTLP when
	// OpenTelemetry's variables say so (config.Tracing), and otherwise
	// installs no tracing at all.
	TracerProvider trace.TracerProvider
}

// Engine is one Tether process's parts. Fields are set by New and never
// nil, but Server (nil for RoleCLI).
type Engine struct {
	Config     *config.Config
	Role       Role
	Logger     *slog.Logger
	Registry   *prometheus.Registry
	DB         *pgxpool.Pool
	SpiceDB    *spicedb.Client
	Metrics    *jobs.Metrics
	Keys       *keyring.Ring
	Syncer     *jobs.Syncer
	River      *river.Client[pgx.Tx]
	Enqueuer   *jobs.Enqueuer
	Service    *app.Service
	Reconciler *jobs.Reconciler
	Server     *app.Server
	// Tracer is nil when tracing is off.
	Tracer trace.TracerProvider

	opts Options
	// startRiver starts River with what a working client runs beside it.
	startRiver func(context.Context) error
	batcher    *jobs.Batcher
	riverUI    starter
	runCtx     context.Context
	runCancel  context.CancelFunc
	http       *http.Server
	httpErr    chan error
	addr       net.Addr
	closers    []func()
	// stopHealing stops the healer (watcher, restores, reschedules).
	stopHealing func()
	stopOnce    sync.Once
	stopErr     error
}

type starter interface{ Start(context.Context) error }

// New builds an engine for cfg. On error everything built so far is closed.
func New(ctx context.Context, cfg *config.Config, opts Options) (_ *Engine, err error) {
	if opts.Role == "" {
		opts.Role = RoleAll
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.RiverLogger == nil {
		opts.RiverLogger = opts.Logger
	}
	if opts.OAuthTimeout == 0 {
		opts.OAuthTimeout = 10 * time.Second
	}
	e := &Engine{Config: cfg, Role: opts.Role, Logger: opts.Logger, opts: opts, Registry: opts.Registry}
	e.runCtx, e.runCancel = context.WithCancel(context.WithoutCancel(ctx))
	e.closers = append(e.closers, e.runCancel)
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.Registry == nil {
		e.Registry = prometheus.NewRegistry()
		e.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if err := e.buildTracing(ctx); err != nil {
		return nil, err
	}
	if err := e.connect(ctx); err != nil {
		return nil, err
	}
	if err := e.buildSync(); err != nil {
		return nil, err
	}
	if e.Role.servesHTTP() {
		if err := e.buildHTTP(); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// Start starts River's workers (roles all and worker) and, with
// Options.Listen, the HTTP server.
func (e *Engine) Start(ctx context.Context) error {
	if e.riverUI != nil {
		if err := e.riverUI.Start(e.runCtx); err != nil {
			return fmt.Errorf("error starting River UI: %w", err)
		}
	}
	if e.Role.works() {
		// With the process's worker lease (jobs of a dead worker are taken
		// over when it expires).
		if err := e.startRiver(e.runCtx); err != nil {
			return err
		}
		// Watch SpiceDB (if this process wins the lease), restore a lost
		// store, reschedule waiting jobs after an outage.
		e.stopHealing = sync.OnceFunc(e.Syncer.StartHealing(e.runCtx))
	}
	if e.opts.Listen && e.Server != nil {
		return e.listen()
	}
	return nil
}

// Addr is the HTTP listener's address once Start has listened.
func (e *Engine) Addr() net.Addr { return e.addr }

// Handler is the HTTP handler (nil for RoleCLI).
func (e *Engine) Handler() http.Handler {
	if e.Server == nil {
		return nil
	}
	return e.Server.Echo
}

// Wait returns when ctx ends or the HTTP server fails.
func (e *Engine) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-e.httpErr:
		return fmt.Errorf("HTTP server failed: %w", err)
	}
}

// Stop drains in order — stop taking requests, let running jobs finish (or
// cancel them past half of ctx's time), flush the batcher, then close the
// connections under them — within ctx. It is safe to call more than once.
func (e *Engine) Stop(ctx context.Context) error {
	e.stopOnce.Do(func() { e.stopErr = e.stop(ctx) })
	return e.stopErr
}

func (e *Engine) stop(ctx context.Context) error {
	var errs []error
	if e.http != nil {
		if err := e.http.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("HTTP shutdown incomplete: %w", err))
		}
	}
	if e.Enqueuer != nil {
		// No request commits any more: let the last hand-offs finish
		// before the batcher under them closes.
		e.Enqueuer.CloseHandOffs(ctx)
	}
	e.StopHealing()
	if e.Role.works() {
		if err := e.stopRiver(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	e.close()
	return errors.Join(errs...)
}

func (e *Engine) stopRiver(ctx context.Context) error {
	if e.opts.CancelJobsOnStop {
		return e.River.StopAndCancel(ctx)
	}
	soft := ctx
	if deadline, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		soft, cancel = context.WithTimeout(ctx, time.Until(deadline)/2)
		defer cancel()
	}
	if err := e.River.Stop(soft); err != nil {
		e.Logger.Warn("River did not stop in time; cancelling running jobs", "error", err)
		return e.River.StopAndCancel(ctx)
	}
	return nil
}

// StopHealing stops this process's healer, its watch lease with it (another
// process takes the lease over). Stop does it too.
func (e *Engine) StopHealing() {
	if e.stopHealing != nil {
		e.stopHealing()
	}
}

// close releases what New built, newest first.
func (e *Engine) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
	e.closers = nil
}
