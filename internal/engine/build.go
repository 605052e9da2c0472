package engine

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"riverqueue.com/riverui"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/internal/oauthclient"
	"github.com/tetherhq/tether/internal/telemetry"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
	"github.com/tetherhq/tether/migrations"
)

// minPoolConns is the pool's floor: River's workers, the batcher's fences
// and the API share it.
const minPoolConns = 20

// buildTracing takes Options.TracerProvider or, when OpenTelemetry's
// variables ask for it, an OTLP exporter flushed and shut down last, after
// the spans of the drain. Otherwise e.Tracer stays nil and nothing is traced.
func (e *Engine) buildTracing(ctx context.Context) error {
	if e.opts.TracerProvider != nil {
		e.Tracer = e.opts.TracerProvider
		return nil
	}
	if !e.Config.TracingOn() {
		return nil
	}
	tp, err := telemetry.NewTracerProvider(ctx, e.Config.Tracing, string(e.Role), e.Logger)
	if err != nil {
		return err
	}
	e.Tracer = tp
	e.closers = append(e.closers, func() {
		flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := tp.Shutdown(flushCtx); err != nil {
			e.Logger.Warn("error flushing traces", "error", err)
		}
	})
	return nil
}

// connect opens the pool and the SpiceDB client; a wrong URL or endpoint
// fails here, naming its variable.
func (e *Engine) connect(ctx context.Context) error {
	cfg := e.Config
	poolCfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return &config.Error{Variable: "TETHER_DATABASE_URL", Problem: "not a valid Postgres URL"}
	}
	poolCfg.MaxConns = max(poolCfg.MaxConns, minPoolConns)
	if e.Tracer != nil {
		poolCfg.ConnConfig.Tracer = telemetry.NewPgxTracer(e.Tracer)
	}
	if e.opts.PoolConfig != nil {
		e.opts.PoolConfig(poolCfg)
	}
	if e.DB, err = pgxpool.NewWithConfig(ctx, poolCfg); err != nil {
		return &config.Error{Variable: "TETHER_DATABASE_URL", Problem: "not a valid Postgres URL"}
	}
	e.closers = append(e.closers, e.DB.Close)
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := e.DB.Ping(pingCtx); err != nil {
		return &config.Error{Variable: "TETHER_DATABASE_URL", Problem: "cannot reach Postgres: " + redactURLError(err, cfg.DatabaseURL), Unreachable: true}
	}
	if e.opts.CheckMigrations {
		if err := checkMigrations(ctx, e.DB); err != nil {
			return err
		}
	}
	spiceCfg := spicedb.Config{Endpoint: cfg.SpiceDBEndpoint, Token: cfg.SpiceDBToken, Insecure: cfg.SpiceDBInsecure}
	if e.opts.SpiceDB != nil {
		e.opts.SpiceDB(&spiceCfg)
	}
	if e.Tracer != nil {
		spiceCfg.DialOptions = append(spiceCfg.DialOptions, telemetry.GRPCDialOption(e.Tracer))
	}
	if e.SpiceDB, err = spicedb.New(spiceCfg); err != nil {
		return &config.Error{Variable: "TETHER_SPICEDB_ENDPOINT", Problem: err.Error()}
	}
	e.closers = append(e.closers, func() { _ = e.SpiceDB.Close() })
	if e.opts.CheckSpiceDB {
		if _, err := e.SpiceDB.CheckSchema(pingCtx); err != nil {
			return &config.Error{Variable: "TETHER_SPICEDB_ENDPOINT", Unreachable: true,
				Problem: "cannot reach SpiceDB at " + spiceCfg.Endpoint + ": " + spicedb.ScrubError(err)}
		}
	}
	return nil
}

// buildSync builds the syncer, its batcher (when this process works jobs
// and group commit is on), the River client, the service and the reconciler.
func (e *Engine) buildSync() error {
	cfg := e.Config
	keys := cfg.EncryptionKeys
	if keys == nil {
		keys = keyring.Empty()
	}
	e.Keys = keys
	e.Metrics = jobs.NewMetrics(e.Registry)
	// Dev mode (loopback only, see config) may talk plain http to any
	// provider; otherwise only to loopback hosts.
	oauth := oauthclient.NewWithOptions(oauthclient.Options{Timeout: e.opts.OAuthTimeout, AllowHTTP: cfg.DevMode})
	if e.Role.works() && cfg.WriteFlushers > 0 {
		e.batcher = jobs.NewBatcher(e.SpiceDB, e.DB, cfg.WriteFlushers, e.Tracer)
		e.closers = append(e.closers, e.batcher.Close) // runs after River has stopped
	}
	var err error
	e.Syncer, err = jobs.NewSyncer(jobs.SyncerDeps{DB: e.DB, SpiceDB: e.SpiceDB, Logger: e.Logger, MaxBackoff: cfg.RetryMaxBackoff,
		Metrics: e.Metrics, Keys: keys, OAuth: oauth, Batcher: e.batcher, OnApplied: e.opts.OnApplied})
	if err != nil {
		return err
	}
	clientCfg := jobs.ClientConfig{
		Work: e.Role.works(), MaxWorkers: cfg.MaxWorkers, FetchCooldown: cfg.FetchCooldown, FetchPollInterval: cfg.FetchPollInterval,
		JobTimeout: cfg.JobTimeout, RescueStuckJobsAfter: cfg.RescueStuckJobsAfter, ReconcileInterval: cfg.ReconcileInterval,
		WorkerLeaseTTL: cfg.WorkerLeaseTTL, Logger: e.opts.RiverLogger, Heal: jobs.DefaultHealConfig(),
	}
	clientCfg.Heal.Enabled = cfg.SelfHealing
	if e.Role.works() && e.Role.servesAPI() {
		clientCfg.HandOff.Grace = cfg.HandOffGrace
	}
	if e.Tracer != nil {
		clientCfg.Plugins = append(clientCfg.Plugins, telemetry.RiverPlugin(e.Tracer))
	}
	if e.opts.Client != nil {
		e.opts.Client(&clientCfg)
	}
	if e.River, e.Enqueuer, e.startRiver, err = jobs.NewClient(e.DB, e.Syncer, clientCfg); err != nil {
		return err
	}
	e.Reconciler = jobs.NewReconciler(e.Syncer, e.Enqueuer)
	publicURL := cfg.PublicURL
	if publicURL == nil {
		publicURL = &url.URL{Scheme: "http", Host: cfg.HTTPAddr}
	}
	e.Service, err = app.NewService(app.ServiceDeps{DB: e.DB, Enqueuer: e.Enqueuer, Keys: keys, Tracer: e.Tracer, OAuth: &app.OAuthConfig{
		Client: oauth, PublicURL: publicURL, AllowedOrigins: cfg.AllowedOrigins, AllowHTTP: cfg.DevMode,
	}})
	return err
}

// buildHTTP builds the HTTP server: the API, the page and River UI for
// roles that serve the API; probes and metrics for every role.
func (e *Engine) buildHTTP() error {
	cfg := e.Config
	auth, err := app.NewAuthenticator(e.runCtx, cfg, app.AuthOptions{Logger: e.Logger})
	if err != nil {
		return err
	}
	e.closers = append(e.closers, auth.Close)
	deps := app.ServerDeps{
		Service: e.Service, Auth: auth, Logger: e.Logger, SpiceDB: e.SpiceDB, Cookie: cfg.AuthCookie, Registry: e.Registry,
		API: e.Role.servesAPI(), Tracer: e.Tracer,
		UI: app.UIConfig{DevLogin: cfg.DevMode, HMACSecret: cfg.AuthHMACSecret, AdminRole: cfg.AuthAdminRole},
	}
	jobs.RegisterStateGauges(e.Registry, e.DB, e.SpiceDB)
	if e.Role.servesAPI() {
		ui, err := riverui.NewHandler(&riverui.HandlerOpts{
			Endpoints: riverui.NewEndpoints(e.River, nil), Logger: e.Logger, Prefix: "/riverui",
		})
		if err != nil {
			return fmt.Errorf("error creating River UI: %w", err)
		}
		e.riverUI, deps.RiverUI = ui, ui
	}
	e.Server = app.NewServer(deps)
	return nil
}

// listen opens TETHER_HTTP_ADDR and serves on it until Stop.
func (e *Engine) listen() error {
	listener, err := net.Listen("tcp", e.Config.HTTPAddr)
	if err != nil {
		return &config.Error{Variable: "TETHER_HTTP_ADDR", Problem: err.Error()}
	}
	e.addr = listener.Addr()
	e.http = &http.Server{
		Handler:           e.Server.Echo,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	e.httpErr = make(chan error, 1)
	go func() {
		if err := e.http.Serve(listener); err != nil && err != http.ErrServerClosed {
			e.httpErr <- err
		}
	}()
	return nil
}

// checkMigrations refuses to run on a database that is behind.
func checkMigrations(ctx context.Context, pool *pgxpool.Pool) error {
	m, err := migrations.New(pool)
	if err != nil {
		return err
	}
	defer m.Close()
	status, err := m.Status(ctx)
	if err != nil {
		return err
	}
	for _, c := range status {
		if !c.UpToDate() {
			return fmt.Errorf("the database is behind (%s at version %d of %d): run `tether migrate up` first", c.Name, c.Current, c.Latest)
		}
	}
	return nil
}

// redactURLError keeps a password in the URL out of messages.
func redactURLError(err error, rawURL string) string {
	msg := err.Error()
	if i := strings.Index(rawURL, "://"); i >= 0 {
		if at := strings.LastIndex(rawURL, "@"); at > i {
			if colon := strings.Index(rawURL[i+3:at], ":"); colon >= 0 {
				msg = strings.ReplaceAll(msg, rawURL[i+3+colon+1:at], "REDACTED")
			}
		}
	}
	return msg
}
