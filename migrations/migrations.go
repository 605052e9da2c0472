// Package migrations holds Tether's SQL migrations (embedded in the binary)
// and runs them together with River's, one migrator at a time.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

//go:embed *.sql
var FS embed.FS

// migrateLockID serializes migrators (two `tether migrate up` at once). River's
// migrator takes no lock of its own.
const migrateLockID int64 = 0x7e7e_0000

// Component is one migrated part and how far it is.
type Component struct {
	Name    string
	Current int64
	Latest  int64
}

// UpToDate reports whether the component has every migration applied.
func (c Component) UpToDate() bool { return c.Current == c.Latest }

// Migrator migrates Tether's tables and River's.
type Migrator struct {
	pool *pgxpool.Pool
	db   *sql.DB
	app  *goose.Provider
	rvr  *rivermigrate.Migrator[pgx.Tx]
}

// New prepares a migrator on pool. Close it when done.
func New(pool *pgxpool.Pool) (*Migrator, error) {
	db := stdlib.OpenDBFromPool(pool)
	app, err := goose.NewProvider(goose.DialectPostgres, db, FS, goose.WithTableName("tether_migrations"))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("error loading migrations: %w", err)
	}
	rvr, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("error creating River migrator: %w", err)
	}
	return &Migrator{pool: pool, db: db, app: app, rvr: rvr}, nil
}

// Close releases the migrator's database handle (not the pool).
func (m *Migrator) Close() error { return m.db.Close() }

// withLock runs fn while holding the migration lock on its own connection.
func (m *Migrator) withLock(ctx context.Context, fn func() error) error {
	conn, err := m.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("error acquiring connection for the migration lock: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", migrateLockID); err != nil {
		return fmt.Errorf("error taking the migration lock: %w", err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrateLockID) //nolint:errcheck // released with the session anyway
	return fn()
}

// Up applies every pending migration: River's first (Tether's tables do not
// depend on them, but River's client needs them), then Tether's. Running it
// again is a no-op.
func (m *Migrator) Up(ctx context.Context) (applied []string, err error) {
	err = m.withLock(ctx, func() error {
		res, err := m.rvr.Migrate(ctx, rivermigrate.DirectionUp, nil)
		if err != nil {
			return fmt.Errorf("error running River migrations: %w", err)
		}
		for _, v := range res.Versions {
			applied = append(applied, fmt.Sprintf("river %03d %s", v.Version, v.Name))
		}
		results, err := m.app.Up(ctx)
		if err != nil {
			return fmt.Errorf("error running Tether migrations: %w", err)
		}
		for _, r := range results {
			applied = append(applied, fmt.Sprintf("tether %05d %s", r.Source.Version, r.Source.Path))
		}
		return nil
	})
	return applied, err
}

// Down rolls back Tether's newest migration (River's tables stay: they may
// hold jobs of other applications).
func (m *Migrator) Down(ctx context.Context) (rolledBack string, err error) {
	err = m.withLock(ctx, func() error {
		r, err := m.app.Down(ctx)
		if err != nil {
			return fmt.Errorf("error rolling back: %w", err)
		}
		rolledBack = fmt.Sprintf("tether %05d %s", r.Source.Version, r.Source.Path)
		return nil
	})
	return rolledBack, err
}

// Status reports Tether's and River's migration versions.
func (m *Migrator) Status(ctx context.Context) ([]Component, error) {
	current, latest, err := m.app.GetVersions(ctx)
	if err != nil {
		return nil, fmt.Errorf("error reading Tether migration status: %w", err)
	}
	out := []Component{{Name: "postgres: tether", Current: current, Latest: latest}}
	all := m.rvr.AllVersions()
	riverLatest := int64(all[len(all)-1].Version)
	existing, err := m.rvr.ExistingVersions(ctx)
	var riverCurrent int64
	if err == nil && len(existing) > 0 {
		riverCurrent = int64(slices.MaxFunc(existing, func(a, b rivermigrate.Migration) int { return a.Version - b.Version }).Version)
	}
	out = append(out, Component{Name: "postgres: river", Current: riverCurrent, Latest: riverLatest})
	return out, nil
}
