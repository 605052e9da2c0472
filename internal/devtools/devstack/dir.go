package devstack

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// The stack's folder belongs to one stack at a time, and keeps its ports
// from one run to the next: a second `make run` fails at once, saying why,
// and `.dev/env` stays right across restarts.

// lockDir takes the folder for this process until unlock. A folder another
// stack holds is refused at once, naming the holder.
func lockDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("error opening %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		return nil, fmt.Errorf("%s is in use by another devstack (pid %s; `make run` in another terminal?): stop that one first, or use another folder (--dir)",
			dir, strings.TrimSpace(string(holder)))
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}

// checkPostmasterPID refuses a data directory a running Postgres serves
// (one left over from a stack that was killed): Postgres would refuse it
// too, but only after we waited for it.
func checkPostmasterPID(dataDir string) error {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return nil // none: nothing runs there
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 0 {
		return nil // unreadable: Postgres decides
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return nil // stale: Postgres removes it itself
	}
	return fmt.Errorf("a Postgres (pid %d, from %s/postmaster.pid) already runs on this data directory: stop it (kill %d) or, if no Postgres runs there, delete postmaster.pid",
		pid, dataDir, pid)
}

// processExited reports whether a child has exited (it is a zombie until
// its parent waits for it), without reaping it: Stop waits for it later.
func processExited(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	rest := string(b)
	if i := strings.LastIndexByte(rest, ')'); i >= 0 {
		rest = rest[i+1:]
	}
	fields := strings.Fields(rest)
	return len(fields) > 0 && (fields[0] == "Z" || fields[0] == "X")
}

// logTail returns the last n lines of a log file.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// permanentError stops waitFor at once: waiting longer cannot help.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// port returns a port for the named listener: with StablePorts the one the
// folder remembers, if it is still free, else a new free one, remembered.
func (s *Stack) port(name string) (int, error) {
	if !s.opts.StablePorts {
		return freePort()
	}
	path := filepath.Join(s.opts.Dir, "ports", name)
	if b, err := os.ReadFile(path); err == nil {
		if p, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && portFree(p) {
			return p, nil
		}
	}
	p, err := freePort()
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return 0, fmt.Errorf("error creating %s: %w", filepath.Dir(path), err)
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(p)+"\n"), 0o644); err != nil {
		return 0, fmt.Errorf("error writing %s: %w", path, err)
	}
	return p, nil
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	return l.Close() == nil
}
