package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/internal/devtools/devstack"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// SpiceDBProcess is a SpiceDB server of the test's own, which the test can
// stop and start again on the same address (to make it unavailable, or, with
// the memory datastore, to wipe it).
type SpiceDBProcess struct {
	tb       testing.TB
	bin      string
	args     []string
	endpoint string
	token    string
	cmd      *exec.Cmd
}

// StartSpiceDBProcess starts a SpiceDB. With onPostgres it runs on a fresh
// database of the test cluster (data survives restarts); otherwise in memory
// (a restart wipes schema and data).
func StartSpiceDBProcess(tb testing.TB, onPostgres bool) *SpiceDBProcess {
	tb.Helper()
	if onPostgres {
		return StartSpiceDBProcessOn(tb, adminURL)
	}
	return startSpiceDBProcess(tb, "")
}

// StartSpiceDBProcessOn starts a SpiceDB on a fresh database of the
// Postgres cluster that clusterAdminURL reaches as superuser (one started
// with other settings than the test cluster's).
func StartSpiceDBProcessOn(tb testing.TB, clusterAdminURL string) *SpiceDBProcess {
	tb.Helper()
	return startSpiceDBProcess(tb, clusterAdminURL)
}

func startSpiceDBProcess(tb testing.TB, clusterAdminURL string) *SpiceDBProcess {
	tb.Helper()
	onPostgres := clusterAdminURL != ""
	bin, err := devstack.SpiceDBBin()
	if err != nil {
		tb.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	endpoint := l.Addr().String()
	l.Close()
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	other := l2.Addr().String()
	l2.Close()
	p := &SpiceDBProcess{tb: tb, bin: bin, endpoint: endpoint, token: "key-" + devstack.RandomSecret()}
	if onPostgres {
		uri := emptyDatabase(tb, clusterAdminURL)
		out, err := exec.Command(bin, "datastore", "migrate", "head", "--skip-release-check",
			"--datastore-engine", "postgres", "--datastore-conn-uri", uri).CombinedOutput()
		if err != nil {
			tb.Fatalf("error migrating SpiceDB datastore: %v\n%s", err, out)
		}
		p.args = []string{"serve", "--skip-release-check", "--telemetry-endpoint=", "--grpc-preshared-key", p.token,
			"--datastore-engine", "postgres", "--datastore-conn-uri", uri, "--grpc-addr", endpoint,
			"--http-enabled=false", "--dispatch-cluster-enabled=false", "--metrics-enabled=false",
			"--datastore-revision-quantization-interval=10ms"}
	} else {
		p.args = []string{"serve-testing", "--skip-release-check", "--grpc-addr", endpoint, "--readonly-grpc-addr", other}
	}
	p.Start()
	tb.Cleanup(p.Stop)
	return p
}

// Config returns a client configuration for this server.
func (p *SpiceDBProcess) Config() spicedb.Config {
	return spicedb.Config{Endpoint: p.endpoint, Token: p.token, Insecure: true}
}

// Start starts the server (again) and waits until it accepts connections.
func (p *SpiceDBProcess) Start() {
	p.tb.Helper()
	cmd := exec.Command(p.bin, p.args...)
	logPath := filepath.Join(p.tb.TempDir(), "spicedb.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		p.tb.Fatal(err)
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		p.tb.Fatal(err)
	}
	p.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", p.endpoint, 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			p.tb.Fatalf("SpiceDB did not start: %v\n%s", err, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server.
func (p *SpiceDBProcess) Stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.cmd = nil
}

// emptyDatabase creates an empty database in the cluster clusterAdminURL
// reaches.
func emptyDatabase(tb testing.TB, clusterAdminURL string) string {
	tb.Helper()
	ctx := context.Background()
	name := fmt.Sprintf("e_%d_%d", time.Now().UnixNano(), os.Getpid())
	conn, err := pgx.Connect(ctx, clusterAdminURL)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), clusterAdminURL)
		if err != nil {
			return
		}
		defer c.Close(context.Background())
		_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	i := strings.LastIndex(clusterAdminURL, "/postgres")
	return clusterAdminURL[:i] + "/" + name + clusterAdminURL[i+len("/postgres"):]
}
