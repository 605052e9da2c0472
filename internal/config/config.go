// Package config reads Tether's configuration from TETHER_* variables. It is
// split by scope — the stores every command needs, the workers, the HTTP
// server and authentication — and every rule, cross-field ones included, is
// checked here, at start, with the variable it concerns named.
package config

import (
	"net/url"
	"time"

	"github.com/tetherhq/tether/internal/keyring"
)

// Config is Tether's whole configuration. The embedded parts keep field
// access flat (cfg.DatabaseURL) while each part has its own loader.
type Config struct {
	Store
	Workers
	Server
	Auth
	Tracing
	// EncryptionKeys encrypt secrets at rest (required by serve).
	EncryptionKeys *keyring.Ring
	LogLevel       string
}

// Store is where Tether's truth and projection live: every command needs it.
type Store struct {
	DatabaseURL     string
	SpiceDBEndpoint string
	SpiceDBToken    string
	SpiceDBInsecure bool
}

// Workers tunes the River workers and the SpiceDB writes they make.
type Workers struct {
	MaxWorkers        int
	FetchCooldown     time.Duration
	FetchPollInterval time.Duration
	JobTimeout        time.Duration
	// RescueStuckJobsAfter must exceed JobTimeout, or running jobs are
	// rescued while they run.
	RescueStuckJobsAfter time.Duration
	// WorkerLeaseTTL: this long after a worker process last renewed its
	// lease, the others take its running sync and token-revocation jobs
	// over. Shorter than RescueStuckJobsAfter.
	WorkerLeaseTTL    time.Duration
	ReconcileInterval time.Duration // 0 disables the periodic reconcile
	RetryMaxBackoff   time.Duration
	// WriteFlushers is how many group-committed SpiceDB writes may be in
	// flight at once; 0 writes each job's updates on their own.
	WriteFlushers int
	// SelfHealing runs, in working processes, the SpiceDB watcher (foreign
	// writes undone within seconds), restores of a lost store and
	// reschedules after outages; off leaves all of it to the periodic
	// reconcile and `tether reconcile`.
	SelfHealing bool
	// HandOffGrace, when not 0, applies the changes a process that both
	// serves the API and works jobs commits right after their commit; their
	// jobs, the durable outbox, are scheduled this far ahead and apply what
	// a hand-off did not (the process died, the write failed).
	HandOffGrace time.Duration
}

// Server is the HTTP side of serve.
type Server struct {
	HTTPAddr        string
	PublicURL       *url.URL
	AllowedOrigins  []string
	ShutdownTimeout time.Duration
	// DevMode enables the page's password-less sign-in (never in production).
	DevMode bool
}

// Auth says which tokens authenticate a request.
type Auth struct {
	AuthHMACSecret []byte
	AuthIssuer     string
	AuthAudience   string
	AuthAdminRole  string
	AuthCookie     string
}

// Scope says which parts of the configuration a command needs.
type Scope int

const (
	// ScopeDatabase: the stores (migrate, reconcile, status, keys).
	ScopeDatabase Scope = iota
	// ScopeServe: everything serve needs, including auth and keys.
	ScopeServe
)

// Error names the variable that is wrong.
type Error struct {
	Variable string
	Problem  string
	// Unreachable: the setting may be right but its service did not answer
	// (tether status tells that apart from a bad setting).
	Unreachable bool
}

func (e *Error) Error() string { return e.Variable + ": " + e.Problem }

// Defaults is the configuration with every default and no stores: the
// starting point of Load, and of tests and benchmarks that build a Config
// without an environment.
func Defaults() Config {
	return Config{
		Workers: Workers{
			MaxWorkers:           100,
			FetchCooldown:        5 * time.Millisecond,
			FetchPollInterval:    50 * time.Millisecond,
			JobTimeout:           30 * time.Second,
			RescueStuckJobsAfter: 2 * time.Minute,
			WorkerLeaseTTL:       5 * time.Second,
			ReconcileInterval:    10 * time.Minute,
			RetryMaxBackoff:      10 * time.Second,
			WriteFlushers:        4,
			SelfHealing:          true,
			HandOffGrace:         2 * time.Second,
		},
		Server: Server{
			HTTPAddr:        "127.0.0.1:8080",
			ShutdownTimeout: 15 * time.Second,
		},
		Auth:     Auth{AuthAdminRole: "tether-admin", AuthCookie: "tether_token"},
		LogLevel: "info",
	}
}
