package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/engine"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

func runReconcile(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := newFlagSet("reconcile", stderr)
	dryRun := fs.Bool("dry-run", false, "report drift without repairing it (exit 2 when there is some)")
	output := fs.String("output", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *output != "text" && *output != "json" {
		return &exitError{code: 2, err: fmt.Errorf("reconcile: --output must be text or json")}
	}
	// The CLI engine's River client only inserts: repairs that raced a
	// change hand the key to the workers.
	d, err := open(ctx, getenv, config.ScopeDatabase, true, func(o *engine.Options) {
		o.Logger = newLogger(stderr, strings.ToLower(getenv("TETHER_LOG_LEVEL")))
	})
	if err != nil {
		return err
	}
	defer d.close()
	progress, finish := progressReporter(stderr)
	defer finish()
	report, err := d.engine.Reconciler.Run(ctx, jobs.ReconcileOpts{DryRun: *dryRun, Progress: progress, Wait: true})
	if err != nil {
		return err
	}
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(report); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "schema\t%s\n", report.Schema)
		fmt.Fprintf(tw, "relationships checked\t%d\n", report.Checked)
		fmt.Fprintf(tw, "desired (postgres)\t%d\n", report.Desired)
		fmt.Fprintf(tw, "actual (spicedb)\t%d\n", report.Actual)
		fmt.Fprintf(tw, "missing\t%d\n", report.Missing)
		fmt.Fprintf(tw, "extra\t%d\n", report.Extra)
		fmt.Fprintf(tw, "pending (change in flight)\t%d\n", report.Pending)
		fmt.Fprintf(tw, "repaired\t%d\n", report.Repaired)
		fmt.Fprintf(tw, "requeued keys\t%d\n", report.Requeued)
		fmt.Fprintf(tw, "duration\t%s\n", report.Duration.Round(time.Millisecond))
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if *dryRun && (report.Drift() > 0 || report.Schema != spicedb.SchemaCurrent.String()) {
		return &exitError{code: 2, err: fmt.Errorf("drift found: %d missing, %d extra, schema %s", report.Missing, report.Extra, report.Schema)}
	}
	return nil
}

// progressReporter shows reconcile progress: a line redrawn in place on a
// terminal, plain lines (at most one a second) otherwise.
func progressReporter(w io.Writer) (progress func(phase string, done int64), finish func()) {
	f, ok := w.(*os.File)
	interactive := ok && term.IsTerminal(int(f.Fd()))
	last := time.Time{}
	drawn := false
	spinner := []rune("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
	frame := 0
	progress = func(phase string, done int64) {
		switch {
		case interactive && time.Since(last) > 100*time.Millisecond:
			frame++
			fmt.Fprintf(w, "\r\033[K%c %-7s %d relationships", spinner[frame%len(spinner)], phase, done)
			drawn, last = true, time.Now()
		case !interactive && time.Since(last) > time.Second:
			fmt.Fprintf(w, "reconcile: %s %d\n", phase, done)
			last = time.Now()
		}
	}
	finish = func() {
		if drawn {
			fmt.Fprint(w, "\r\033[K")
		}
	}
	return progress, finish
}
