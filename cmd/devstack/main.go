// Command devstack runs a command against throwaway local services: a
// Postgres cluster and a pinned SpiceDB. `make run` and `make test` use it;
// Ctrl-C (or the command ending) stops everything it started.
//
//	devstack [--dir DIR] [--test] -- command [args...]
//
// The command gets TETHER_DATABASE_URL, TETHER_SPICEDB_ENDPOINT,
// TETHER_SPICEDB_TOKEN and TETHER_SPICEDB_INSECURE (dev mode, persistent data
// in DIR, SpiceDB on its own Postgres database), or TETHER_TEST_ADMIN_URL and
// TETHER_TEST_SPICEDB_ENDPOINT (--test: a fresh cluster in a temporary
// folder, SpiceDB in memory with one empty store per token). Variables that
// are already set are kept: `make run` then uses your Postgres or SpiceDB.
// A folder is used by one devstack at a time (a second one fails at once),
// and keeps its ports from one run to the next when they are free; the
// command also gets TETHER_DEV_DIR.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/tetherhq/tether/internal/devtools/devstack"
)

func main() {
	os.Exit(run())
}

func run() int {
	dir := flag.String("dir", ".dev", "folder for data and generated dev secrets")
	test := flag.Bool("test", false, "test mode: fresh temporary cluster, in-memory SpiceDB")
	flag.Parse()
	args := flag.Args()
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: devstack [--dir DIR] [--test] -- command [args...]")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "devstack: "+format+"\n", a...) }

	opts := devstack.Options{Dir: *dir, Logf: logf, StablePorts: true}
	if *test {
		tmp, err := os.MkdirTemp("", "tether-test-*")
		if err != nil {
			logf("%v", err)
			return 1
		}
		defer os.RemoveAll(tmp)
		if err := os.Chmod(tmp, 0o755); err != nil {
			logf("%v", err)
			return 1
		}
		opts = devstack.Options{Dir: tmp, SpiceDBMemory: true, Fast: true, Logf: logf}
	} else {
		opts.SkipPostgres = os.Getenv("TETHER_DATABASE_URL") != ""
		opts.SkipSpiceDB = os.Getenv("TETHER_SPICEDB_ENDPOINT") != ""
		if opts.SkipPostgres && !opts.SkipSpiceDB {
			logf("TETHER_DATABASE_URL is set: SpiceDB runs in memory (set TETHER_SPICEDB_ENDPOINT to use yours)")
			opts.SpiceDBMemory = true
		}
	}
	stack, err := devstack.Start(ctx, opts)
	if err != nil {
		logf("%v", err)
		return 1
	}
	defer stack.Stop()
	env, err := childEnv(stack, opts, *test)
	if err != nil {
		logf("%v", err)
		return 1
	}
	return runChild(ctx, args, env, logf)
}

// childEnv is the command's environment: the stack's services, and for
// make run the persistent dev secrets, unless already set.
func childEnv(stack *devstack.Stack, opts devstack.Options, test bool) ([]string, error) {
	env := os.Environ()
	if test {
		return append(env, "TETHER_TEST_ADMIN_URL="+stack.AdminURL, "TETHER_TEST_SPICEDB_ENDPOINT="+stack.SpiceDBEndpoint,
			"TETHER_TEST_POSTGRES_BIN="+stack.PostgresBinDir), nil
	}
	setDefault := func(name, value string) {
		if os.Getenv(name) == "" {
			env = append(env, name+"="+value)
		}
	}
	env = append(env, "TETHER_DEV_DIR="+opts.Dir)
	if !opts.SkipPostgres {
		env = append(env, "TETHER_DATABASE_URL="+stack.DatabaseURL)
	}
	if !opts.SkipSpiceDB {
		token := stack.SpiceDBToken
		if opts.SpiceDBMemory {
			token = "dev"
		}
		env = append(env, "TETHER_SPICEDB_ENDPOINT="+stack.SpiceDBEndpoint, "TETHER_SPICEDB_TOKEN="+token, "TETHER_SPICEDB_INSECURE=true")
	}
	hmac, err := stack.PersistentSecret("auth-hmac-secret")
	if err != nil {
		return nil, err
	}
	setDefault("TETHER_AUTH_HMAC_SECRET", hmac)
	key, err := stack.PersistentSecret("encryption-key")
	if err != nil {
		return nil, err
	}
	setDefault("TETHER_ENCRYPTION_KEYS", "dev1:"+devstack.StdBase64(key))
	return env, nil
}

// runChild runs the command until it ends or Ctrl-C stops it.
func runChild(ctx context.Context, args, env []string, logf func(string, ...any)) int {
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if ctx.Err() != nil {
				return 0 // stopped by Ctrl-C
			}
			return exitErr.ExitCode()
		}
		logf("%v", err)
		return 1
	}
	return 0
}
