package devstack

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
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
	dataDir := filepath.Join(s.opts.Dir, "postgres")
	args := []string{"-D", dataDir, "-p", strconv.Itoa(port), "-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=", "-c", "max_connections=500", "-c", "shared_buffers=256MB"}
	if s.opts.Fast {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	logFile, err := os.OpenFile(filepath.Join(s.opts.Dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("error opening Postgres log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(s.PostgresBinDir, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGINT, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("error starting Postgres: %w", err)
	}
	// First, as Start put it: Stop stops the newest first, and SpiceDB may
	// run on this Postgres.
	s.procs = append([]*exec.Cmd{cmd}, s.procs...)
	if err := waitFor(ctx, 60*time.Second, func(ctx context.Context) error {
		conn, err := pgx.Connect(ctx, s.AdminURL)
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	}); err != nil {
		return fmt.Errorf("Postgres did not come back (log: %s): %w", logFile.Name(), err)
	}
	s.opts.Logf("Postgres listening again on 127.0.0.1:%d", port)
	return nil
}
