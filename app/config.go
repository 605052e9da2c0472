// Package app is Tether's HTTP service: configuration, authentication, the
// service methods (one transaction each, with the River jobs of the change)
// and the echo handlers that bind, call and render them.
package app

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/internal/keyring"
)

// Config is Tether's configuration, read from TETHER_* variables.
type Config struct {
	DatabaseURL     string
	SpiceDBEndpoint string
	SpiceDBToken    string
	SpiceDBInsecure bool
	HTTPAddr        string
	PublicURL       *url.URL
	EncryptionKeys  *keyring.Ring
	AuthHMACSecret  []byte
	AuthIssuer      string
	AuthAudience    string
	AuthAdminRole   string
	AuthCookie      string
	AllowedOrigins  []string
	LogLevel        string
	// DevMode enables the page's password-less sign-in (never in production).
	DevMode bool
	// Worker tuning (see jobs.ClientConfig).
	MaxWorkers           int
	FetchCooldown        time.Duration
	FetchPollInterval    time.Duration
	JobTimeout           time.Duration
	RescueStuckJobsAfter time.Duration
	ReconcileInterval    time.Duration
	RetryMaxBackoff      time.Duration
	ShutdownTimeout      time.Duration
	// WriteFlushers is how many group-committed SpiceDB writes may be in
	// flight at once; 0 writes each job's updates on their own.
	WriteFlushers int
}

// ConfigError names the variable that is wrong.
type ConfigError struct {
	Variable string
	Problem  string
}

func (e *ConfigError) Error() string { return e.Variable + ": " + e.Problem }

// ConfigScope says which parts of the configuration a command needs.
type ConfigScope int

const (
	// ScopeDatabase: the database and SpiceDB (migrate, reconcile, status).
	ScopeDatabase ConfigScope = iota
	// ScopeServe: everything serve needs, including auth and keys.
	ScopeServe
)

// LoadConfig reads the configuration from getenv. Every problem is reported
// with the variable it concerns; all problems are reported at once.
func LoadConfig(getenv func(string) string, scope ConfigScope) (*Config, error) {
	cfg := &Config{}
	var errs []error
	bad := func(variable, format string, args ...any) {
		errs = append(errs, &ConfigError{Variable: variable, Problem: fmt.Sprintf(format, args...)})
	}
	str := func(name, def string) string {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			return v
		}
		return def
	}
	duration := func(name string, def time.Duration) time.Duration {
		v := str(name, "")
		if v == "" {
			return def
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			bad(name, "not a duration such as 500ms or 2m: %q", v)
			return def
		}
		return d
	}

	cfg.DatabaseURL = str("TETHER_DATABASE_URL", "")
	if cfg.DatabaseURL == "" {
		bad("TETHER_DATABASE_URL", "required (a Postgres URL such as postgres://user@host:5432/tether)")
	} else if u, err := url.Parse(cfg.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		bad("TETHER_DATABASE_URL", "not a postgres:// URL")
	}
	cfg.SpiceDBEndpoint = str("TETHER_SPICEDB_ENDPOINT", "")
	if cfg.SpiceDBEndpoint == "" {
		bad("TETHER_SPICEDB_ENDPOINT", "required (SpiceDB's gRPC host:port)")
	} else if !strings.Contains(cfg.SpiceDBEndpoint, ":") {
		bad("TETHER_SPICEDB_ENDPOINT", "must be host:port, got %q", cfg.SpiceDBEndpoint)
	}
	cfg.SpiceDBToken = getenv("TETHER_SPICEDB_TOKEN")
	if v := str("TETHER_SPICEDB_INSECURE", "false"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			bad("TETHER_SPICEDB_INSECURE", "must be true or false, got %q", v)
		}
		cfg.SpiceDBInsecure = b
	}
	cfg.LogLevel = strings.ToLower(str("TETHER_LOG_LEVEL", "info"))
	switch cfg.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("TETHER_LOG_LEVEL", "must be debug, info, warn or error, got %q", cfg.LogLevel)
	}
	cfg.MaxWorkers = 100
	if v := str("TETHER_MAX_WORKERS", ""); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10_000 {
			bad("TETHER_MAX_WORKERS", "must be a number from 1 to 10000, got %q", v)
		}
		cfg.MaxWorkers = n
	}
	cfg.WriteFlushers = 4
	if v := str("TETHER_SPICEDB_WRITE_FLUSHERS", ""); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 256 {
			bad("TETHER_SPICEDB_WRITE_FLUSHERS", "must be a number from 0 (no group commit) to 256, got %q", v)
		}
		cfg.WriteFlushers = n
	}
	cfg.FetchCooldown = duration("TETHER_FETCH_COOLDOWN", 5*time.Millisecond)
	cfg.FetchPollInterval = duration("TETHER_FETCH_POLL_INTERVAL", 50*time.Millisecond)
	cfg.JobTimeout = duration("TETHER_JOB_TIMEOUT", 30*time.Second)
	cfg.RescueStuckJobsAfter = duration("TETHER_RESCUE_STUCK_JOBS_AFTER", 2*time.Minute)
	if cfg.RescueStuckJobsAfter <= cfg.JobTimeout {
		bad("TETHER_RESCUE_STUCK_JOBS_AFTER", "must be longer than TETHER_JOB_TIMEOUT (%s), or running jobs are rescued while they run", cfg.JobTimeout)
	}
	cfg.ReconcileInterval = duration("TETHER_RECONCILE_INTERVAL", 10*time.Minute)
	cfg.RetryMaxBackoff = duration("TETHER_RETRY_MAX_BACKOFF", 10*time.Second)
	cfg.ShutdownTimeout = duration("TETHER_SHUTDOWN_TIMEOUT", 15*time.Second)
	if cfg.FetchPollInterval < cfg.FetchCooldown {
		bad("TETHER_FETCH_POLL_INTERVAL", "must not be shorter than TETHER_FETCH_COOLDOWN")
	}

	if keys := getenv("TETHER_ENCRYPTION_KEYS"); keys != "" || scope == ScopeServe {
		ring, err := keyring.Parse(keys)
		if err != nil {
			bad("TETHER_ENCRYPTION_KEYS", "%v", err)
		}
		cfg.EncryptionKeys = ring
	}

	if scope == ScopeServe {
		cfg.HTTPAddr = str("TETHER_HTTP_ADDR", "127.0.0.1:8080")
		public := str("TETHER_PUBLIC_URL", "http://"+cfg.HTTPAddr)
		u, err := url.Parse(public)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			bad("TETHER_PUBLIC_URL", "must be an absolute http(s) URL without query, got %q", public)
		} else {
			u.Path = strings.TrimSuffix(u.Path, "/")
			cfg.PublicURL = u
		}
		if s := getenv("TETHER_AUTH_HMAC_SECRET"); s != "" {
			if len(s) < 32 {
				bad("TETHER_AUTH_HMAC_SECRET", "must be at least 32 characters")
			}
			cfg.AuthHMACSecret = []byte(s)
		}
		cfg.AuthIssuer = str("TETHER_AUTH_ISSUER", "")
		cfg.AuthAudience = str("TETHER_AUTH_AUDIENCE", "")
		if cfg.AuthIssuer != "" {
			if u, err := url.Parse(cfg.AuthIssuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				bad("TETHER_AUTH_ISSUER", "must be the issuer's URL, got %q", cfg.AuthIssuer)
			}
			if cfg.AuthAudience == "" {
				bad("TETHER_AUTH_AUDIENCE", "required with TETHER_AUTH_ISSUER")
			}
		}
		if cfg.AuthIssuer == "" && cfg.AuthHMACSecret == nil {
			bad("TETHER_AUTH_HMAC_SECRET", "set it (development) or TETHER_AUTH_ISSUER and TETHER_AUTH_AUDIENCE (production): without one no request can authenticate")
		}
		if v := str("TETHER_DEV_MODE", "false"); v != "" {
			b, err := strconv.ParseBool(v)
			switch {
			case err != nil:
				bad("TETHER_DEV_MODE", "must be true or false, got %q", v)
			case b && cfg.PublicURL != nil && cfg.PublicURL.Scheme == "https":
				bad("TETHER_DEV_MODE", "refused with an https TETHER_PUBLIC_URL: dev mode lets anyone sign in as anyone")
			case b && cfg.AuthHMACSecret == nil:
				bad("TETHER_DEV_MODE", "needs TETHER_AUTH_HMAC_SECRET to sign its cookies")
			}
			cfg.DevMode = b
		}
		cfg.AuthAdminRole = str("TETHER_AUTH_ADMIN_ROLE", "tether-admin")
		cfg.AuthCookie = str("TETHER_AUTH_COOKIE", "tether_token")
		for _, o := range strings.Split(getenv("TETHER_ALLOWED_ORIGINS"), ",") {
			o = strings.TrimSpace(o)
			if o == "" {
				continue
			}
			u, err := url.Parse(o)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
				bad("TETHER_ALLOWED_ORIGINS", "%q is not an origin such as https://app.example.org", o)
				continue
			}
			cfg.AllowedOrigins = append(cfg.AllowedOrigins, u.Scheme+"://"+strings.ToLower(u.Host))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return cfg, nil
}
