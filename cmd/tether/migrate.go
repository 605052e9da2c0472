package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/jobs/spicedb"
	"github.com/tetherhq/tether/migrations"
)

func runMigrate(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) != 1 || (args[0] != "up" && args[0] != "down" && args[0] != "status") {
		return &exitError{code: 2, err: fmt.Errorf("usage: tether migrate up|down|status")}
	}
	d, err := open(ctx, getenv, config.ScopeDatabase, false)
	if err != nil {
		return err
	}
	defer d.close()
	m, err := migrations.New(d.pool)
	if err != nil {
		return err
	}
	defer m.Close()

	switch args[0] {
	case "up":
		return migrateUp(ctx, m, d.spice, stdout)
	case "down":
		rolledBack, err := m.Down(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "rolled back %s\n", rolledBack)
		return nil
	}
	return migrateStatus(ctx, m, d.spice, stdout)
}

// migrateUp applies Postgres's pending migrations (Tether's and River's),
// then SpiceDB's schema unless it is already current: one command brings
// both stores up to date.
func migrateUp(ctx context.Context, m *migrations.Migrator, spice *spicedb.Client, stdout io.Writer) error {
	applied, err := m.Up(ctx)
	if err != nil {
		return err
	}
	for _, a := range applied {
		fmt.Fprintf(stdout, "applied %s\n", a)
	}
	state, err := spice.CheckSchema(ctx)
	if err != nil {
		return err
	}
	if state != spicedb.SchemaCurrent {
		if err := spice.WriteSchema(ctx); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "applied spicedb schema")
		applied = append(applied, "spicedb")
	}
	if len(applied) == 0 {
		fmt.Fprintln(stdout, "everything is up to date")
	}
	return nil
}

// migrateStatus prints one row per migration component and one for
// SpiceDB's schema, each saying what to run when it is behind.
func migrateStatus(ctx context.Context, m *migrations.Migrator, spice *spicedb.Client, stdout io.Writer) error {
	status, err := m.Status(ctx)
	if err != nil {
		return err
	}
	state, err := spice.CheckSchema(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "COMPONENT\tCURRENT\tLATEST\tSTATE")
	for _, c := range status {
		st := "up to date"
		if !c.UpToDate() {
			st = "pending: run tether migrate up"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", c.Name, c.Current, c.Latest, st)
	}
	st := "up to date"
	if state != spicedb.SchemaCurrent {
		st = state.String() + ": run tether migrate up"
	}
	fmt.Fprintf(tw, "spicedb: schema\t-\t-\t%s\n", st)
	return tw.Flush()
}
