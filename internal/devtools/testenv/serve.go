package testenv

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	binaryOnce sync.Once
	binaryDir  string
	binaryPath string
	binaryErr  error
)

// TetherBinary builds cmd/tether from this source tree once per test process
// (the Go build cache makes it quick after `make build`) and returns its
// path: tests run the very code they test, never a stale bin/tether.
func TetherBinary(tb testing.TB) string {
	tb.Helper()
	binaryOnce.Do(func() {
		binaryDir, binaryErr = os.MkdirTemp("", "tether-bin-*")
		if binaryErr != nil {
			return
		}
		binaryPath = filepath.Join(binaryDir, "tether")
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = filepath.Join(runtime.GOROOT(), "bin", "go") //nolint:staticcheck // only when go is not on PATH
		}
		cmd := exec.Command(goBin, "build", "-o", binaryPath, "github.com/tetherhq/tether/cmd/tether")
		if out, err := cmd.CombinedOutput(); err != nil {
			binaryErr = fmt.Errorf("error building cmd/tether: %w\n%s", err, out)
		}
	})
	if binaryErr != nil {
		tb.Fatalf("testenv: %v", binaryErr)
	}
	return binaryPath
}

// removeBinary deletes what TetherBinary built (at the end of the tests).
func removeBinary() {
	if binaryDir != "" {
		_ = os.RemoveAll(binaryDir)
	}
}

// ServeProcess is a `tether serve` process of the test's own.
type ServeProcess struct {
	cmd     *exec.Cmd
	out     *Buffer
	exited  chan struct{}
	waitErr error // how it exited, once exited is closed
	// Addr is where it serves HTTP (probes and /metrics for --role worker).
	Addr string
	// ClientID is its River client id (and worker lease), as River records
	// it in river_job.attempted_by.
	ClientID string
}

// ServeEnv is what StartServe passes to `tether serve`: the test's database
// and SpiceDB store, the test key ring and secret, a free loopback port, no
// periodic reconcile; everything else is left to the production defaults.
// Callers add or override variables.
func (tt *Tether) ServeEnv() map[string]string {
	return map[string]string{
		"TETHER_DATABASE_URL":       tt.DB.Config().ConnString(),
		"TETHER_SPICEDB_ENDPOINT":   tt.SpiceConfig.Endpoint,
		"TETHER_SPICEDB_TOKEN":      tt.SpiceConfig.Token,
		"TETHER_SPICEDB_INSECURE":   "true",
		"TETHER_ENCRYPTION_KEYS":    TestKeyRing,
		"TETHER_AUTH_HMAC_SECRET":   "testenv-serve-secret-testenv-serve-secret",
		"TETHER_HTTP_ADDR":          "127.0.0.1:0",
		"TETHER_RECONCILE_INTERVAL": "0",
		"TETHER_LOG_LEVEL":          "info",
	}
}

// TetherCommand is `tether args...` with env and no other TETHER_ variable.
func TetherCommand(tb testing.TB, env map[string]string, args ...string) *exec.Cmd {
	tb.Helper()
	cmd := exec.Command(TetherBinary(tb), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TETHER_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// StartServe runs `tether serve args...` with env (see TetherCommand) and
// waits until it serves; it is killed when the test ends.
func StartServe(tb testing.TB, env map[string]string, args ...string) *ServeProcess {
	tb.Helper()
	cmd := TetherCommand(tb, env, append([]string{"serve"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &ServeProcess{cmd: cmd, out: &Buffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		tb.Fatalf("testenv: error starting tether serve: %v", err)
	}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	tb.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	deadline := time.After(30 * time.Second)
	for p.Addr == "" {
		select {
		case <-p.exited:
			tb.Fatalf("testenv: tether serve exited before serving:\n%s", p.out)
		case <-deadline:
			tb.Fatalf("testenv: tether serve did not serve within 30 s:\n%s", p.out)
		case <-time.After(10 * time.Millisecond):
		}
		p.Addr, p.ClientID = servingLine(p.out.String())
	}
	return p
}

// servingLine finds serve's "tether serving" log line.
func servingLine(out string) (addr, clientID string) {
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var line struct {
			Msg      string `json:"msg"`
			Addr     string `json:"addr"`
			ClientID string `json:"client_id"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "tether serving" {
			return line.Addr, line.ClientID
		}
	}
	return "", ""
}

// Kill SIGKILLs the process and waits until it is gone.
func (p *ServeProcess) Kill(tb testing.TB) {
	tb.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		tb.Fatalf("testenv: error killing tether serve: %v", err)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		tb.Fatal("testenv: tether serve still running 10 s after SIGKILL")
	}
}

// Stop sends SIGTERM (what Kubernetes sends) and requires a clean exit —
// drained, status 0 — within d.
func (p *ServeProcess) Stop(tb testing.TB, d time.Duration) {
	tb.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		tb.Fatalf("testenv: error stopping tether serve: %v", err)
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-p.exited:
		if p.waitErr != nil {
			tb.Fatalf("testenv: tether serve exited with %v after SIGTERM:\n%s", p.waitErr, p.out)
		}
	case <-timer.C:
		tb.Fatalf("testenv: tether serve still running %s after SIGTERM:\n%s", d, p.out)
	}
}

// Exited reports whether the process has exited.
func (p *ServeProcess) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// URL is the process's HTTP base URL.
func (p *ServeProcess) URL() string { return "http://" + p.Addr }

// Pid is the process id.
func (p *ServeProcess) Pid() int { return p.cmd.Process.Pid }

// Output is what the process wrote so far (JSON logs).
func (p *ServeProcess) Output() string { return p.out.String() }
