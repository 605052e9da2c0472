package main

import (
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/jobs/spicedb"
)

// 9. Wipe under load: SpiceDB's store replaced by an empty one (its
// database dropped and migrated again: a new datastore) while changes keep
// coming; time from its return until SpiceDB holds exactly what Postgres
// implies, with no command run (the engine's healer restores it).
// Baseline: reading both sides (as scenario 6).
func scenarioWipe(ctx context.Context, b *bench) ([]Metric, error) {
	users, pools := 100_000, 10_000
	if b.full {
		users = 1_000_000
	}
	e, err := b.engine(ctx, engineOpts{workers: true})
	if err != nil {
		return nil, err
	}
	defer e.close()
	const providers = 10
	if err := loadReconcileFixture(ctx, e, users, pools, providers); err != nil {
		return nil, err
	}
	// The fixture went into Postgres alone: restore it once by hand.
	initial, err := reconcile(ctx, e)
	if err != nil {
		return nil, err
	}
	if err := e.analyze(ctx); err != nil {
		return nil, err
	}
	stopLoad, changes := loadChanges(ctx, e, 100)
	time.Sleep(2 * time.Second) // changes flowing before the wipe
	if err := wipeSpiceDB(ctx, b, e.proc); err != nil {
		stopLoad()
		return nil, err
	}
	back := time.Now()
	time.Sleep(2 * time.Second) // and after it
	stopLoad()
	restored, err := waitMirrors(ctx, e, 10*time.Minute)
	if err != nil {
		return nil, err
	}
	took := time.Since(back)
	dry, err := reconcile(ctx, e, "--dry-run")
	if err != nil {
		return nil, err
	}
	readBoth, err := readBothSides(ctx, e)
	if err != nil {
		return nil, err
	}
	label := fmt.Sprintf("%dk connections, %dk pools", users/1000, pools/1000)
	return []Metric{{Name: "wipe under load → fully restored, no command (" + label + ")", Value: took.Seconds(), Unit: "s",
		Baseline: "reading both sides only", BaselineValue: readBoth.Seconds(), Ratio: ratio(took.Seconds(), readBoth.Seconds()),
		Target: "≤ 15 s", Pass: passIf(took <= 15*time.Second && dry.report.Drift() == 0 && dry.code == 0),
		Notes: []string{fmt.Sprintf("%d changes during the run; %d relationships restored; restoring the fixture with tether reconcile took %s; dry run after: drift %d, pending %d",
			changes.Load(), restored, initial.took.Round(time.Millisecond), dry.report.Drift(), dry.report.Pending)}}}, nil
}

// waitMirrors waits until no change is pending, no sync job is left and
// SpiceDB holds as many relationships as Postgres implies (the dry run
// afterwards checks them one by one); it returns that count.
func waitMirrors(ctx context.Context, e *engine, timeout time.Duration) (int64, error) {
	deadline := time.Now().Add(timeout)
	for {
		if err := e.waitSynced(ctx, time.Until(deadline)); err != nil {
			return 0, err
		}
		var desired int64
		if err := e.db.QueryRow(ctx, "SELECT count(*) FROM desired_relationships").Scan(&desired); err != nil {
			return 0, err
		}
		var actual int64
		err := e.spice.Export(ctx, func(page []spicedb.Relationship) error { actual += int64(len(page)); return nil })
		if err == nil && actual == desired {
			return actual, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("SpiceDB holds %d relationships after %s, Postgres implies %d (%v)", actual, timeout, desired, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// loadChanges connects new users at rate per second until stop is called.
func loadChanges(ctx context.Context, e *engine, rate int) (stop func(), n *atomic.Int64) {
	n = &atomic.Int64{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			if _, err := e.svc.ConnectionSetStatus(ctx, fmt.Sprintf("wipe-%d", i), "p1", "connected"); err == nil {
				n.Add(1)
			}
		}
	}()
	return func() { close(done); wg.Wait() }, n
}

// wipeSpiceDB replaces the server's store by an empty one: stop it, drop
// and recreate its database, migrate, start it again on the same address.
func wipeSpiceDB(ctx context.Context, b *bench, p *spiceProcess) error {
	p.stop()
	u, err := url.Parse(p.dbURL)
	if err != nil {
		return err
	}
	name := pgx.Identifier{strings.TrimPrefix(u.Path, "/")}.Sanitize()
	conn, err := pgx.Connect(ctx, b.stack.AdminURL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, stmt := range []string{"DROP DATABASE " + name + " WITH (FORCE)", "CREATE DATABASE " + name} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return err
		}
	}
	if out, err := exec.CommandContext(ctx, p.bin, "datastore", "migrate", "head", "--skip-release-check",
		"--datastore-engine", "postgres", "--datastore-conn-uri", p.dbURL).CombinedOutput(); err != nil {
		return fmt.Errorf("error migrating SpiceDB: %w\n%s", err, out)
	}
	return p.start()
}
