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
	pool, spice := d.pool, d.spice
	m, err := migrations.New(pool)
	if err != nil {
		return err
	}
	defer m.Close()

	switch args[0] {
	case "up":
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
	case "down":
		rolledBack, err := m.Down(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "rolled back %s\n", rolledBack)
		return nil
	}
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
