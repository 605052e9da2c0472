package jobs

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/tetherhq/tether/db/dbsqlc"
)

// ClientConfig tunes the River client that carries the outbox.
type ClientConfig struct {
	// Work says whether this client works jobs (role worker or all) or only
	// inserts them (role api).
	Work       bool
	MaxWorkers int
	// FetchCooldown and FetchPollInterval bound pickup latency. River's
	// defaults (100 ms, 1 s) cap it near 100 ms; every client, including
	// insert-only ones (they send the wake-up), should use the same values.
	FetchCooldown     time.Duration
	FetchPollInterval time.Duration
	JobTimeout        time.Duration
	// RescueStuckJobsAfter is how long a job may stay running before the
	// leader assumes its worker died and retries it.
	RescueStuckJobsAfter time.Duration
	ReconcileInterval    time.Duration // 0 disables the periodic reconcile
	// ExpireInterval is how often abandoned authorizations are ended
	// (0: DefaultExpireInterval).
	ExpireInterval time.Duration
	// WorkerLeaseTTL is how long a working process that stopped renewing its
	// lease keeps its running jobs before the other workers take them over
	// (0: DefaultWorkerLeaseTTL).
	WorkerLeaseTTL time.Duration
	Logger         *slog.Logger
	// Plugins are added to River's (tracing, when it is on).
	Plugins []rivertype.Plugin
	// Heal configures self-healing in a working client's process (watch,
	// restore, reschedule): see HealConfig and Syncer.StartHealing.
	Heal HealConfig
	// HandOff, with a Grace, applies the changes this process commits right
	// after their commit (only where it also works jobs and serves the API).
	HandOff HandOffConfig
}

// DefaultClientConfig are the production defaults.
func DefaultClientConfig() ClientConfig {
	return ClientConfig{
		Work:                 true,
		MaxWorkers:           100,
		FetchCooldown:        5 * time.Millisecond,
		FetchPollInterval:    50 * time.Millisecond,
		JobTimeout:           30 * time.Second,
		RescueStuckJobsAfter: 2 * time.Minute,
		ReconcileInterval:    10 * time.Minute,
		WorkerLeaseTTL:       DefaultWorkerLeaseTTL,
		Heal:                 DefaultHealConfig(),
	}
}

// NewClient builds the River client with every Tether worker registered (a
// leader must know every kind, or it discards their stuck jobs). Start it
// with start, never client.Start: a client that works jobs takes its
// process's worker lease first and runs the lease and the reclaimer beside
// it.
func NewClient(db *pgxpool.Pool, syncer *Syncer, cfg ClientConfig) (client *river.Client[pgx.Tx], enqueuer *Enqueuer, start func(context.Context) error, err error) {
	if db == nil || syncer == nil {
		return nil, nil, nil, errors.New("jobs.NewClient: missing pool or syncer")
	}
	if cfg.RescueStuckJobsAfter <= cfg.JobTimeout {
		return nil, nil, nil, fmt.Errorf("rescue time %s must exceed the job timeout %s, or running jobs are rescued while they run",
			cfg.RescueStuckJobsAfter, cfg.JobTimeout)
	}
	if cfg.WorkerLeaseTTL < 0 {
		return nil, nil, nil, fmt.Errorf("worker lease TTL %s must not be negative", cfg.WorkerLeaseTTL)
	}
	// Every write Tether makes is signed with the deployment's write key, so
	// the watcher (in whichever process) knows it for Tether's.
	syncer.SpiceDB.SignWritesWith(func(ctx context.Context) ([]byte, error) { return dbsqlc.New().WatchWriteKey(ctx, db) })
	enqueuer = &Enqueuer{}
	workers := registerWorkers(syncer, enqueuer)
	rc := &river.Config{
		FetchCooldown:        cfg.FetchCooldown,
		FetchPollInterval:    cfg.FetchPollInterval,
		JobTimeout:           cfg.JobTimeout,
		RescueStuckJobsAfter: cfg.RescueStuckJobsAfter,
		Logger:               cfg.Logger,
		MaxAttempts:          maxSyncAttempts,
		Middleware:           []rivertype.Middleware{syncer.Metrics.middleware()},
		Plugins:              cfg.Plugins,
		Workers:              workers,
	}
	var lease *workerLease
	if cfg.Work {
		lease = newWorkerLease(cmp.Or(cfg.WorkerLeaseTTL, DefaultWorkerLeaseTTL), orDiscard(syncer.Logger))
		rc.ID = lease.clientID
		rc.Middleware = append(rc.Middleware, lease.middleware())
		rc.Queues = map[string]river.QueueConfig{river.QueueDefault: {
			MaxWorkers: cfg.MaxWorkers, FetchCooldown: cfg.FetchCooldown, FetchPollInterval: cfg.FetchPollInterval,
		}}
		rc.PeriodicJobs = periodicJobs(cfg)
	}
	client, err = river.NewClient(riverpgxv5.New(db), rc)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("error creating River client: %w", err)
	}
	enqueuer.River = client
	if cfg.Work && cfg.HandOff.Grace > 0 {
		enqueuer.handOff = newHandOff(syncer, client, cfg.HandOff)
	}
	start = func(ctx context.Context) error { return startInsertOnly(ctx, client) }
	if lease != nil {
		w := &workerRuntime{jobsDB: db, lease: lease,
			reclaimer: &reclaimer{river: client, logger: orDiscard(syncer.Logger), metrics: syncer.Metrics}}
		start = func(ctx context.Context) error { return w.start(ctx, client) }
	}
	if cfg.Work && cfg.Heal.Enabled && syncer.healer == nil {
		syncer.healer = newHealer(syncer, enqueuer, &Reconciler{Syncer: syncer, Enqueuer: enqueuer}, cfg.Heal)
	}
	return client, enqueuer, start, nil
}

// periodicJobs are what the leader inserts on a timer: the reconcile (unless
// disabled) and the expiry of abandoned authorizations.
func periodicJobs(cfg ClientConfig) []*river.PeriodicJob {
	var jobs []*river.PeriodicJob
	if cfg.ReconcileInterval > 0 {
		jobs = append(jobs, river.NewPeriodicJob(
			river.PeriodicInterval(cfg.ReconcileInterval),
			func() (river.JobArgs, *river.InsertOpts) { return ReconcileArgs{}, nil },
			&river.PeriodicJobOpts{ID: "tether.reconcile"},
		))
	}
	return append(jobs, river.NewPeriodicJob(
		river.PeriodicInterval(cmp.Or(cfg.ExpireInterval, DefaultExpireInterval)),
		func() (river.JobArgs, *river.InsertOpts) { return ExpireArgs{}, nil },
		&river.PeriodicJobOpts{ID: "tether.expire_authorizations"},
	))
}

// registerWorkers registers every kind Tether works.
func registerWorkers(syncer *Syncer, enqueuer *Enqueuer) *river.Workers {
	workers := river.NewWorkers()
	river.AddWorker(workers, &ConnectionWorker{Syncer: syncer})
	river.AddWorker(workers, &PoolWorker{Syncer: syncer})
	river.AddWorker(workers, &RevokeWorker{Syncer: syncer})
	river.AddWorker(workers, &ReconcileWorker{Reconciler: &Reconciler{Syncer: syncer, Enqueuer: enqueuer}})
	river.AddWorker(workers, &ExpireWorker{Syncer: syncer})
	return workers
}

func orDiscard(logger *slog.Logger) *slog.Logger {
	if logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return logger
}

// NewReconciler builds a reconciler for one-off use (the CLI).
func NewReconciler(syncer *Syncer, enqueuer *Enqueuer) *Reconciler {
	return &Reconciler{Syncer: syncer, Enqueuer: enqueuer}
}
