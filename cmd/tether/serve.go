package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"riverqueue.com/riverui"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/oauthclient"
	"github.com/tetherhq/tether/jobs"
)

func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	role := fs.String("role", "all", "api (HTTP only), worker (River workers; probes and metrics over HTTP) or all")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *role != "api" && *role != "worker" && *role != "all" {
		return &exitError{code: 2, err: fmt.Errorf("serve: --role must be api, worker or all, got %q", *role)}
	}
	d, err := open(ctx, getenv, app.ScopeServe, true)
	if err != nil {
		return err
	}
	defer d.close()
	cfg, pool, spice := d.cfg, d.pool, d.spice
	logger := newLogger(stdout, cfg.LogLevel)
	auth, err := app.NewAuthenticator(ctx, cfg)
	if err != nil {
		return err
	}

	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := jobs.NewMetrics(registry)
	work := *role != "api"
	oauth := oauthclient.New(10 * time.Second)
	syncer := &jobs.Syncer{DB: pool, SpiceDB: spice, Logger: logger, MaxBackoff: cfg.RetryMaxBackoff, Metrics: metrics,
		Keys: cfg.EncryptionKeys, OAuth: oauth}
	if cfg.WriteFlushers > 0 && *role != "api" {
		syncer.Batcher = jobs.NewBatcher(spice, pool, cfg.WriteFlushers)
		defer syncer.Batcher.Close() // on return, after River has stopped below
	}
	riverClient, enqueuer, err := jobs.NewClient(pool, syncer, jobs.ClientConfig{
		Work: work, MaxWorkers: cfg.MaxWorkers, FetchCooldown: cfg.FetchCooldown, FetchPollInterval: cfg.FetchPollInterval,
		JobTimeout: cfg.JobTimeout, RescueStuckJobsAfter: cfg.RescueStuckJobsAfter, ReconcileInterval: cfg.ReconcileInterval,
		// River reports routine counts at info every few seconds: keep its
		// warnings and errors only, unless debugging.
		Logger: riverLogger(stdout, cfg.LogLevel),
	})
	if err != nil {
		return err
	}
	jobs.RegisterStateGauges(registry, pool, spice)
	riverUI, err := riverui.NewHandler(&riverui.HandlerOpts{
		Endpoints: riverui.NewEndpoints(riverClient, nil), Logger: logger, Prefix: "/riverui",
	})
	if err != nil {
		return fmt.Errorf("error creating River UI: %w", err)
	}
	if err := riverUI.Start(ctx); err != nil {
		return fmt.Errorf("error starting River UI: %w", err)
	}

	server := app.NewServer(app.ServerDeps{
		Service: &app.Service{DB: pool, Enqueuer: enqueuer, Keys: cfg.EncryptionKeys, OAuth: &app.OAuthConfig{
			Client: oauth, PublicURL: cfg.PublicURL, AllowedOrigins: cfg.AllowedOrigins,
		}},
		Auth: auth, Logger: logger, SpiceDB: spice, Cookie: cfg.AuthCookie, Registry: registry,
		API:     *role != "worker",
		UI:      app.UIConfig{DevLogin: cfg.DevMode, HMACSecret: cfg.AuthHMACSecret, AdminRole: cfg.AuthAdminRole},
		RiverUI: riverUI,
	})
	listener, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return &app.ConfigError{Variable: "TETHER_HTTP_ADDR", Problem: err.Error()}
	}
	httpServer := &http.Server{
		Handler:           server.Echo,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
	}

	if work {
		if err := riverClient.Start(ctx); err != nil {
			return fmt.Errorf("error starting River: %w", err)
		}
	}
	httpErr := make(chan error, 1)
	go func() { httpErr <- httpServer.Serve(listener) }()
	logger.Info("tether serving", "addr", listener.Addr().String(), "public_url", cfg.PublicURL.String(), "role", *role)

	select {
	case <-ctx.Done():
	case err := <-httpErr:
		if !errors.Is(err, http.ErrServerClosed) {
			logger.Error("HTTP server failed", "error", err)
		}
	}
	// Drain in order: stop taking requests, then let running jobs finish,
	// then close the pool under both. Each step is bounded.
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	if err := httpServer.Shutdown(shutdownCtx); err != nil {
		logger.Warn("HTTP shutdown incomplete", "error", err)
	}
	if work {
		softCtx, softCancel := context.WithTimeout(shutdownCtx, cfg.ShutdownTimeout/2)
		if err := riverClient.Stop(softCtx); err != nil {
			logger.Warn("River did not stop in time; cancelling running jobs", "error", err)
			_ = riverClient.StopAndCancel(shutdownCtx)
		}
		softCancel()
	}
	logger.Info("stopped")
	return nil
}
