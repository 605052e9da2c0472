package devstack

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// ShutdownMode is how StopPostgres stops the server (see pg_ctl stop -m).
type ShutdownMode int

const (
	// ShutdownFast (SIGINT) rolls back open transactions, terminates every
	// session with an admin_shutdown error and checkpoints: pg_ctl restart.
	ShutdownFast ShutdownMode = iota
	// ShutdownImmediate (SIGQUIT) ends every process at once without a
	// checkpoint; the next start runs crash recovery, like after a power loss
	// (with fsync on, committed data survives).
	ShutdownImmediate
)

// postgresProc returns the index of the stack's Postgres process in s.procs.
func (s *Stack) postgresProc() int {
	for i, p := range s.procs {
		if p.Path != "" && filepath.Base(p.Path) == "postgres" {
			return i
		}
	}
	return -1
}

// StopPostgres stops the stack's Postgres and waits until it has exited; the
// port and the data directory are kept for StartPostgresAgain.
func (s *Stack) StopPostgres(mode ShutdownMode) error {
	i := s.postgresProc()
	if i < 0 {
		return errors.New("devstack: the stack runs no Postgres")
	}
	p := s.procs[i]
	sig := syscall.SIGINT
	if mode == ShutdownImmediate {
		sig = syscall.SIGQUIT
	}
	if err := p.Process.Signal(sig); err != nil {
		return fmt.Errorf("devstack: error signalling Postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = p.Process.Kill()
		<-done
	}
	s.procs = append(s.procs[:i], s.procs[i+1:]...)
	return nil
}

// StartPostgresAgain starts the stack's Postgres after StopPostgres, on the
// same port and data directory, and waits until it accepts connections.
func (s *Stack) StartPostgresAgain(ctx context.Context) error {
	if s.postgresProc() >= 0 {
		return errors.New("devstack: Postgres is running")
	}
	u, err := url.Parse(s.AdminURL)
	if err != nil || u.Port() == "" {
		return fmt.Errorf("devstack: the stack never started Postgres (admin URL %q)", s.AdminURL)
	}
	port, _ := strconv.Atoi(u.Port())
	cred, err := runAs()
	if err != nil {
		return err
	}
	cmd, err := s.launchPostgres(ctx, s.PostgresBinDir, cred, port)
	if err != nil {
		return err
	}
	// First, as Start put it: Stop stops the newest first, and SpiceDB may
	// run on this Postgres.
	s.procs = append([]*exec.Cmd{cmd}, s.procs...)
	s.opts.Logf("Postgres listening again on 127.0.0.1:%d", port)
	return nil
}
