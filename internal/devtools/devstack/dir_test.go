package devstack

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A folder belongs to one stack: a second one is refused at once, naming
// the first; once the first lets go, it is free again.
func TestLockDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	unlock, err := lockDir(dir)
	require.NoError(t, err)
	_, err = lockDir(dir)
	require.ErrorContains(t, err, dir+" is in use by another devstack (pid "+strconv.Itoa(os.Getpid())+";")
	unlock()
	unlock, err = lockDir(dir)
	require.NoError(t, err)
	unlock()
}

// A data directory that a live Postgres serves is refused with the reason; a
// stale postmaster.pid (its process gone) is left to Postgres.
func TestCheckPostmasterPID(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	require.NoError(t, checkPostmasterPID(dir), "no postmaster.pid")
	pidFile := filepath.Join(dir, "postmaster.pid")
	require.NoError(t, os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"+dir+"\n"), 0o600))
	require.ErrorContains(t, checkPostmasterPID(dir), "already runs on this data directory")

	gone := exec.Command("true")
	require.NoError(t, gone.Run())
	require.NoError(t, os.WriteFile(pidFile, []byte(strconv.Itoa(gone.Process.Pid)+"\n"), 0o600))
	require.NoError(t, checkPostmasterPID(dir), "a stale pid file")
}

// processExited sees a child exit before anyone waits for it.
func TestProcessExited(t *testing.T) {
	t.Parallel()
	cmd := exec.Command("sleep", "30")
	require.NoError(t, cmd.Start())
	require.False(t, processExited(cmd.Process.Pid))
	require.NoError(t, cmd.Process.Kill())
	deadline := time.Now().Add(5 * time.Second)
	for !processExited(cmd.Process.Pid) {
		require.True(t, time.Now().Before(deadline), "the killed child never showed as exited")
		time.Sleep(5 * time.Millisecond)
	}
	_ = cmd.Wait()
}

// Ports are remembered and reused while free.
func TestStablePorts(t *testing.T) {
	t.Parallel()
	s := &Stack{opts: Options{Dir: t.TempDir(), StablePorts: true}}
	first, err := s.port("postgres")
	require.NoError(t, err)
	again, err := s.port("postgres")
	require.NoError(t, err)
	require.Equal(t, first, again)
}
