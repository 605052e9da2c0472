// Package devstack starts the throwaway local services Tether runs and tests
// against: a Postgres cluster from the machine's Postgres binaries and a
// pinned SpiceDB binary. It is used by `make run`, `make test` and the
// benchmarks; it is never part of a production deployment.
package devstack

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options configure a stack.
type Options struct {
	// Dir holds the Postgres data and generated secrets. Reused when it
	// exists (make run); tests pass a fresh temporary folder.
	Dir string
	// SpiceDBBin is the spicedb binary; empty finds bin/spicedb above the
	// working directory or on PATH.
	SpiceDBBin string
	// SpiceDBMemory runs `spicedb serve-testing`: an in-memory datastore with
	// an isolated empty store per bearer token (tests). Otherwise SpiceDB
	// runs on its own database in the stack's Postgres.
	SpiceDBMemory bool
	// Fast turns off fsync and friends: for tests and benchmarks, never for
	// data you want to keep across a crash.
	Fast bool
	// CommitTimestampsOff starts Postgres without track_commit_timestamp,
	// which SpiceDB's Watch needs on its Postgres datastore: only for the
	// test of Tether's behaviour where Watch is unavailable.
	CommitTimestampsOff bool
	// SkipPostgres / SkipSpiceDB leave a service to the caller (it was
	// configured from the environment).
	SkipPostgres, SkipSpiceDB bool
	// StablePorts reuses the ports of the last run in Dir when they are
	// free (make run: the printed environment stays right).
	StablePorts bool
	Logf        func(format string, args ...any)
}

// Stack is a running set of local services.
type Stack struct {
	// AdminURL reaches the cluster's "postgres" database as superuser.
	AdminURL string
	// DatabaseURL is Tether's own database.
	DatabaseURL     string
	SpiceDBEndpoint string
	SpiceDBToken    string
	PostgresBinDir  string

	procs  []*exec.Cmd
	opts   Options
	unlock func()
}

// Start starts the services. Call Stop when done.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("error creating %s: %w", opts.Dir, err)
	}
	unlock, err := lockDir(opts.Dir)
	if err != nil {
		return nil, err
	}
	s := &Stack{opts: opts, unlock: unlock}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	if !opts.SkipPostgres {
		if err := s.startPostgres(ctx); err != nil {
			return nil, err
		}
	}
	if !opts.SkipSpiceDB {
		if err := s.startSpiceDB(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Stop stops every process the stack started, newest first.
func (s *Stack) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		if p.Process == nil {
			continue
		}
		_ = p.Process.Signal(syscall.SIGINT) // Postgres: fast shutdown; SpiceDB: graceful
		done := make(chan struct{})
		go func() { _ = p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = p.Process.Kill()
			<-done
		}
	}
	s.procs = nil
	if s.unlock != nil {
		s.unlock()
		s.unlock = nil
	}
}

// PostgresBinDir finds initdb and postgres: on PATH, through pg_config, or
// under /usr/lib/postgresql/*/bin (newest first).
func PostgresBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			return filepath.Dir(real), nil
		}
		return filepath.Dir(p), nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) > 0 {
		// Sort by major version, numerically.
		best, bestVersion := "", -1
		for _, m := range matches {
			v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(m))))
			if v > bestVersion {
				best, bestVersion = m, v
			}
		}
		return filepath.Dir(best), nil
	}
	return "", errors.New("no Postgres server binaries found (looked for initdb on PATH, via pg_config --bindir and under /usr/lib/postgresql/*/bin); install them, e.g. apt-get install postgresql")
}

// runAs returns the credentials to run Postgres with: Postgres refuses to run
// as root, so as root it runs as the "postgres" user.
func runAs() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, Postgres needs an unprivileged user: %w (create one with useradd --system postgres)", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (s *Stack) startPostgres(ctx context.Context) error {
	binDir, err := PostgresBinDir()
	if err != nil {
		return err
	}
	s.PostgresBinDir = binDir
	cred, err := runAs()
	if err != nil {
		return err
	}
	dataDir := filepath.Join(s.opts.Dir, "postgres")
	if _, err := os.Stat(filepath.Join(dataDir, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dataDir, 0o700); err != nil {
			return fmt.Errorf("error creating %s: %w", dataDir, err)
		}
		if err := chownForPostgres(dataDir, cred); err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"), "-D", dataDir, "-U", "postgres",
			"-A", "trust", "-E", "UTF8", "--locale", "C.UTF-8", "--no-instructions")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("error running initdb: %w\n%s", err, out)
		}
		s.opts.Logf("initialized Postgres cluster in %s", dataDir)
	}
	if err := checkPostmasterPID(dataDir); err != nil {
		return err
	}
	port, err := s.port("postgres")
	if err != nil {
		return err
	}
	s.AdminURL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	s.DatabaseURL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/tether?sslmode=disable", port)
	cmd, err := s.launchPostgres(ctx, binDir, cred, port)
	if err != nil {
		return err
	}
	s.procs = append(s.procs, cmd)
	for _, db := range []string{"tether", "spicedb"} {
		if err := createDatabase(ctx, s.AdminURL, db); err != nil {
			return err
		}
	}
	s.opts.Logf("Postgres listening on 127.0.0.1:%d", port)
	return nil
}

// launchPostgres starts the cluster in the stack's folder on port and waits
// until it accepts connections (the caller records the process).
func (s *Stack) launchPostgres(ctx context.Context, binDir string, cred *syscall.Credential, port int) (*exec.Cmd, error) {
	args := []string{"-D", filepath.Join(s.opts.Dir, "postgres"), "-p", strconv.Itoa(port), "-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=", "-c", "max_connections=500", "-c", "shared_buffers=256MB",
		// SpiceDB's Watch on its Postgres datastore needs commit timestamps:
		// without them Tether repairs foreign writes only periodically.
		"-c", "track_commit_timestamp=" + onOff(!s.opts.CommitTimestampsOff)}
	if s.opts.Fast {
		args = append(args, "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
	}
	logFile, err := os.OpenFile(filepath.Join(s.opts.Dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("error opening Postgres log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(binDir, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGINT, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("error starting Postgres: %w", err)
	}
	if err := waitFor(ctx, 60*time.Second, func(ctx context.Context) error {
		if processExited(cmd.Process.Pid) {
			return permanentError{fmt.Errorf("it exited at once:\n%s", logTail(logFile.Name(), 5))}
		}
		conn, err := pgx.Connect(ctx, s.AdminURL)
		if err != nil {
			return err
		}
		return conn.Close(ctx)
	}); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("Postgres did not come up (log: %s): %w", logFile.Name(), err)
	}
	return cmd, nil
}

func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

func chownForPostgres(dir string, cred *syscall.Credential) error {
	if cred == nil {
		return nil
	}
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("error handing %s to the postgres user: %w", dir, err)
	}
	return nil
}

func createDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("error connecting to Postgres: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("error checking database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("error creating database %s: %w", name, err)
	}
	return nil
}

// SpiceDBBin finds the pinned spicedb binary: $TETHER_SPICEDB_BIN, bin/spicedb
// in the working directory or a parent (the repository), or PATH.
func SpiceDBBin() (string, error) {
	if p := os.Getenv("TETHER_SPICEDB_BIN"); p != "" {
		return p, nil
	}
	dir, _ := os.Getwd()
	for dir != "" {
		p := filepath.Join(dir, "bin", "spicedb")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	if p, err := exec.LookPath("spicedb"); err == nil {
		return p, nil
	}
	return "", errors.New("no spicedb binary: run `make bin/spicedb` (go install github.com/authzed/spicedb/cmd/spicedb@v1.56.2 into bin/) or set TETHER_SPICEDB_BIN")
}

func (s *Stack) startSpiceDB(ctx context.Context) error {
	bin := s.opts.SpiceDBBin
	if bin == "" {
		var err error
		if bin, err = SpiceDBBin(); err != nil {
			return err
		}
	}
	grpcPort, err := s.port("spicedb-grpc")
	if err != nil {
		return err
	}
	args, err := s.spiceDBArgs(ctx, bin, grpcPort)
	if err != nil {
		return err
	}
	logFile, err := os.OpenFile(filepath.Join(s.opts.Dir, "spicedb.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("error opening SpiceDB log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("error starting SpiceDB: %w", err)
	}
	s.procs = append(s.procs, cmd)
	s.SpiceDBEndpoint = fmt.Sprintf("127.0.0.1:%d", grpcPort)
	if err := waitFor(ctx, 60*time.Second, func(ctx context.Context) error {
		if processExited(cmd.Process.Pid) {
			return permanentError{fmt.Errorf("it exited at once:\n%s", logTail(logFile.Name(), 5))}
		}
		conn, err := net.DialTimeout("tcp", s.SpiceDBEndpoint, time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	}); err != nil {
		return fmt.Errorf("SpiceDB did not come up (log: %s): %w", logFile.Name(), err)
	}
	s.opts.Logf("SpiceDB listening on %s", s.SpiceDBEndpoint)
	return nil
}

// spiceDBArgs are SpiceDB's command line: in memory (serve-testing), or on
// its own database in the stack's Postgres, migrated first.
func (s *Stack) spiceDBArgs(ctx context.Context, bin string, grpcPort int) ([]string, error) {
	if s.opts.SpiceDBMemory {
		readonlyPort, err := s.port("spicedb-readonly")
		if err != nil {
			return nil, err
		}
		s.SpiceDBToken = "" // serve-testing: any token; each one is its own store
		return []string{"serve-testing", "--skip-release-check",
			"--grpc-addr", fmt.Sprintf("127.0.0.1:%d", grpcPort),
			"--readonly-grpc-addr", fmt.Sprintf("127.0.0.1:%d", readonlyPort)}, nil
	}
	if s.DatabaseURL == "" {
		return nil, errors.New("SpiceDB on Postgres needs the stack's Postgres")
	}
	key, err := persistentSecret(filepath.Join(s.opts.Dir, "spicedb-preshared-key"))
	if err != nil {
		return nil, err
	}
	s.SpiceDBToken = key
	uri := strings.Replace(s.DatabaseURL, "/tether?", "/spicedb?", 1)
	migrate := exec.CommandContext(ctx, bin, "datastore", "migrate", "head", "--skip-release-check",
		"--datastore-engine", "postgres", "--datastore-conn-uri", uri)
	if out, err := migrate.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("error migrating SpiceDB's datastore: %w\n%s", err, out)
	}
	metricsPort, err := s.port("spicedb-metrics")
	if err != nil {
		return nil, err
	}
	return []string{"serve", "--skip-release-check", "--telemetry-endpoint=",
		"--grpc-preshared-key", key,
		"--datastore-engine", "postgres", "--datastore-conn-uri", uri,
		"--grpc-addr", fmt.Sprintf("127.0.0.1:%d", grpcPort),
		"--http-enabled=false", "--dispatch-cluster-enabled=false",
		"--metrics-addr", fmt.Sprintf("127.0.0.1:%d", metricsPort)}, nil
}

// persistentSecret reads a random secret from path, creating it once.
func persistentSecret(path string) (string, error) {
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	secret := RandomSecret()
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("error writing %s: %w", path, err)
	}
	return secret, nil
}

// RandomSecret returns 32 random bytes, base64url.
func RandomSecret() string {
	return base64.RawURLEncoding.EncodeToString(RandomBytes(32))
}

// RandomBytes returns n random bytes.
func RandomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// PersistentSecret is persistentSecret for callers that keep dev secrets in
// the stack's folder (the dev JWT secret, the dev encryption key).
func (s *Stack) PersistentSecret(name string) (string, error) {
	return persistentSecret(filepath.Join(s.opts.Dir, name))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("error finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitFor(ctx context.Context, timeout time.Duration, try func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		attemptCtx, attemptCancel := context.WithTimeout(ctx, 2*time.Second)
		last = try(attemptCtx)
		attemptCancel()
		if last == nil {
			return nil
		}
		if errors.As(last, &permanentError{}) {
			return last
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// StdBase64 re-encodes a base64url secret as standard base64 (the key ring's
// format).
func StdBase64(urlSecret string) string {
	b, err := base64.RawURLEncoding.DecodeString(urlSecret)
	if err != nil {
		return ""
	}
	return base64.StdEncoding.EncodeToString(b)
}
