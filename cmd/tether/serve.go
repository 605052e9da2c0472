package main

import (
	"context"
	"fmt"
	"io"

	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/engine"
)

func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	roleFlag := fs.String("role", "all", "api (HTTP only), worker (River workers; probes and metrics over HTTP) or all")
	if err := fs.Parse(args); err != nil {
		return err
	}
	role, err := engine.ParseRole(*roleFlag)
	if err != nil {
		return &exitError{code: 2, err: fmt.Errorf("serve: %w", err)}
	}
	cfg, err := config.Load(getenv, config.ScopeServe)
	if err != nil {
		return err
	}
	logger := newLogger(stdout, cfg.LogLevel)
	e, err := engine.New(ctx, cfg, engine.Options{
		Role: role, Logger: logger, Listen: true, CheckMigrations: true, CheckSpiceDB: true,
		// River reports routine counts at info every few seconds: keep its
		// warnings and errors only, unless debugging.
		RiverLogger: riverLogger(stdout, cfg.LogLevel),
	})
	if err != nil {
		return err
	}
	if err := e.Start(ctx); err != nil {
		_ = e.Stop(context.WithoutCancel(ctx))
		return err
	}
	if cfg.DevMode {
		logger.Warn("TETHER_DEV_MODE is on: anyone who reaches " + cfg.PublicURL.String() +
			" can sign in as anyone, admins included, at /ui/dev/login. Never run it like this in production.")
	}
	logger.Info("tether serving", "addr", e.Addr().String(), "public_url", cfg.PublicURL.String(), "role", string(role),
		"client_id", e.River.ID(), "dev_mode", cfg.DevMode, "tracing", cfg.TracingOn())
	if err := e.Wait(ctx); err != nil {
		logger.Error("HTTP server failed", "error", err)
	}
	// Drain in order, each step bounded: stop taking requests, let running
	// jobs finish, then close the pool under both.
	logger.Info("shutting down")
	stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	defer cancel()
	if err := e.Stop(stopCtx); err != nil {
		logger.Warn("shutdown incomplete", "error", err)
	}
	logger.Info("stopped")
	return nil
}
