package config

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/internal/loopback"
)

// Load reads the configuration from getenv. Every problem is reported with
// the variable it concerns; all problems are reported at once.
func Load(getenv func(string) string, scope Scope) (*Config, error) {
	r := &reader{getenv: getenv}
	cfg := Defaults()
	r.store(&cfg.Store)
	r.workers(&cfg.Workers)
	r.tracing(&cfg.Tracing)
	cfg.LogLevel = strings.ToLower(r.str("TETHER_LOG_LEVEL", cfg.LogLevel))
	switch cfg.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		r.bad("TETHER_LOG_LEVEL", "must be debug, info, warn or error, got %q", cfg.LogLevel)
	}
	if keys := getenv("TETHER_ENCRYPTION_KEYS"); keys != "" || scope == ScopeServe {
		ring, err := keyring.Parse(keys)
		if err != nil {
			r.bad("TETHER_ENCRYPTION_KEYS", "%v", err)
		}
		cfg.EncryptionKeys = ring
	}
	if scope == ScopeServe {
		r.server(&cfg.Server)
		r.auth(&cfg.Auth)
		r.devMode(&cfg)
	}
	if len(r.errs) > 0 {
		return nil, errors.Join(r.errs...)
	}
	return &cfg, nil
}

func (r *reader) store(s *Store) {
	s.DatabaseURL = r.str("TETHER_DATABASE_URL", "")
	if s.DatabaseURL == "" {
		r.bad("TETHER_DATABASE_URL", "required (a Postgres URL such as postgres://user@host:5432/tether)")
	} else if u, err := url.Parse(s.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		r.bad("TETHER_DATABASE_URL", "not a postgres:// URL")
	}
	s.SpiceDBEndpoint = r.str("TETHER_SPICEDB_ENDPOINT", "")
	if s.SpiceDBEndpoint == "" {
		r.bad("TETHER_SPICEDB_ENDPOINT", "required (SpiceDB's gRPC host:port)")
	} else if !strings.Contains(s.SpiceDBEndpoint, ":") {
		r.bad("TETHER_SPICEDB_ENDPOINT", "must be host:port, got %q", s.SpiceDBEndpoint)
	}
	s.SpiceDBToken = r.getenv("TETHER_SPICEDB_TOKEN")
	s.SpiceDBInsecure = r.boolean("TETHER_SPICEDB_INSECURE", false)
}

func (r *reader) workers(w *Workers) {
	w.MaxWorkers = r.integer("TETHER_MAX_WORKERS", w.MaxWorkers, 1, 10_000, "must be a number from 1 to 10000")
	w.WriteFlushers = r.integer("TETHER_SPICEDB_WRITE_FLUSHERS", w.WriteFlushers, 0, 256,
		"must be a number from 0 (no group commit) to 256")
	w.FetchCooldown = r.duration("TETHER_FETCH_COOLDOWN", w.FetchCooldown)
	w.FetchPollInterval = r.duration("TETHER_FETCH_POLL_INTERVAL", w.FetchPollInterval)
	w.JobTimeout = r.duration("TETHER_JOB_TIMEOUT", w.JobTimeout)
	w.RescueStuckJobsAfter = r.duration("TETHER_RESCUE_STUCK_JOBS_AFTER", w.RescueStuckJobsAfter)
	w.WorkerLeaseTTL = r.duration("TETHER_WORKER_LEASE_TTL", w.WorkerLeaseTTL)
	w.ReconcileInterval = r.duration("TETHER_RECONCILE_INTERVAL", w.ReconcileInterval)
	w.RetryMaxBackoff = r.duration("TETHER_RETRY_MAX_BACKOFF", w.RetryMaxBackoff)
	w.SelfHealing = r.boolean("TETHER_SELF_HEALING", w.SelfHealing)
	w.HandOffGrace = r.duration("TETHER_SYNC_HANDOFF_GRACE", w.HandOffGrace)
	if w.HandOffGrace != 0 && (w.HandOffGrace < 200*time.Millisecond || w.HandOffGrace > time.Minute) {
		r.bad("TETHER_SYNC_HANDOFF_GRACE", "must be 0 (off) or from 200ms to 1m (how long a handed-off change's job waits), got %s", w.HandOffGrace)
	}
	if w.RescueStuckJobsAfter <= w.JobTimeout {
		r.bad("TETHER_RESCUE_STUCK_JOBS_AFTER", "must be longer than TETHER_JOB_TIMEOUT (%s), or running jobs are rescued while they run", w.JobTimeout)
	}
	switch {
	case w.WorkerLeaseTTL < time.Second || w.WorkerLeaseTTL > 10*time.Minute:
		r.bad("TETHER_WORKER_LEASE_TTL", "must be from 1s to 10m (a worker renews its lease every fifth of it), got %s", w.WorkerLeaseTTL)
	case w.WorkerLeaseTTL >= w.RescueStuckJobsAfter:
		r.bad("TETHER_WORKER_LEASE_TTL", "must be shorter than TETHER_RESCUE_STUCK_JOBS_AFTER (%s): the lease is there to take a dead worker's jobs over sooner",
			w.RescueStuckJobsAfter)
	}
	if w.FetchPollInterval < w.FetchCooldown {
		r.bad("TETHER_FETCH_POLL_INTERVAL", "must not be shorter than TETHER_FETCH_COOLDOWN")
	}
}

func (r *reader) server(s *Server) {
	s.HTTPAddr = r.str("TETHER_HTTP_ADDR", s.HTTPAddr)
	s.ShutdownTimeout = r.duration("TETHER_SHUTDOWN_TIMEOUT", s.ShutdownTimeout)
	public := r.str("TETHER_PUBLIC_URL", "http://"+s.HTTPAddr)
	u, err := url.Parse(public)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		r.bad("TETHER_PUBLIC_URL", "must be an absolute http(s) URL without query, got %q", public)
	} else {
		u.Path = strings.TrimSuffix(u.Path, "/")
		s.PublicURL = u
	}
	for _, o := range strings.Split(r.getenv("TETHER_ALLOWED_ORIGINS"), ",") {
		o = strings.TrimSpace(o)
		if o == "" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
			r.bad("TETHER_ALLOWED_ORIGINS", "%q is not an origin such as https://app.example.org", o)
			continue
		}
		s.AllowedOrigins = append(s.AllowedOrigins, u.Scheme+"://"+strings.ToLower(u.Host))
	}
}

func (r *reader) auth(a *Auth) {
	if s := r.getenv("TETHER_AUTH_HMAC_SECRET"); s != "" {
		if len(s) < 32 {
			r.bad("TETHER_AUTH_HMAC_SECRET", "must be at least 32 characters")
		}
		a.AuthHMACSecret = []byte(s)
	}
	a.AuthIssuer = r.str("TETHER_AUTH_ISSUER", "")
	a.AuthAudience = r.str("TETHER_AUTH_AUDIENCE", "")
	if a.AuthIssuer != "" {
		if u, err := url.Parse(a.AuthIssuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			r.bad("TETHER_AUTH_ISSUER", "must be the issuer's URL, got %q", a.AuthIssuer)
		}
		if a.AuthAudience == "" {
			r.bad("TETHER_AUTH_AUDIENCE", "required with TETHER_AUTH_ISSUER")
		}
	}
	switch {
	case a.AuthIssuer == "" && a.AuthHMACSecret == nil:
		r.bad("TETHER_AUTH_HMAC_SECRET", "set it (development) or TETHER_AUTH_ISSUER and TETHER_AUTH_AUDIENCE (production): without one no request can authenticate")
	case a.AuthIssuer != "" && a.AuthHMACSecret != nil:
		// An HMAC secret left set in production would mint tokens past the
		// issuer (any sub, any role).
		r.bad("TETHER_AUTH_HMAC_SECRET", "refused together with TETHER_AUTH_ISSUER: production tokens come from the issuer only; unset the secret")
	}
	a.AuthAdminRole = r.str("TETHER_AUTH_ADMIN_ROLE", a.AuthAdminRole)
	a.AuthCookie = r.str("TETHER_AUTH_COOKIE", a.AuthCookie)
	if !validCookieName(a.AuthCookie) {
		r.bad("TETHER_AUTH_COOKIE", "%q is not a cookie name (letters, digits and !#$%%&'*+-.^_`|~ only)", a.AuthCookie)
	}
}

// devMode reads TETHER_DEV_MODE, whose rules span the server and auth parts.
func (r *reader) devMode(cfg *Config) {
	on := r.boolean("TETHER_DEV_MODE", false)
	if on {
		if problem := devModeProblem(cfg); problem != "" {
			r.bad("TETHER_DEV_MODE", "%s", problem)
		}
	}
	cfg.DevMode = on
}

// devModeProblem says why dev mode cannot be on with cfg, or "". Dev mode
// hands out admin cookies to anyone who asks, so it is allowed only where
// nobody else can ask: a loopback listener, a non-https public URL (never a
// real deployment) and no production issuer.
func devModeProblem(cfg *Config) string {
	switch {
	case !loopback.Addr(cfg.HTTPAddr):
		return "refused unless TETHER_HTTP_ADDR is a loopback address (127.0.0.1, [::1] or localhost), got " + strconv.Quote(cfg.HTTPAddr) +
			": dev mode lets anyone who reaches Tether sign in as anyone, admins included"
	case cfg.PublicURL != nil && cfg.PublicURL.Scheme == "https":
		return "refused with an https TETHER_PUBLIC_URL: dev mode lets anyone sign in as anyone"
	case cfg.AuthHMACSecret == nil:
		return "needs TETHER_AUTH_HMAC_SECRET to sign its cookies"
	case cfg.AuthIssuer != "":
		return "refused with TETHER_AUTH_ISSUER: dev mode is for development, the issuer for production"
	}
	return ""
}

// validCookieName reports whether name can be a cookie's name (an RFC 6265
// token): net/http silently drops cookies with other names.
func validCookieName(name string) bool {
	return name != "" && (&http.Cookie{Name: name, Value: "x"}).Valid() == nil
}

// reader reads variables and collects every problem.
type reader struct {
	getenv func(string) string
	errs   []error
}

func (r *reader) bad(variable, format string, args ...any) {
	r.errs = append(r.errs, &Error{Variable: variable, Problem: fmt.Sprintf(format, args...)})
}

func (r *reader) str(name, def string) string {
	if v := strings.TrimSpace(r.getenv(name)); v != "" {
		return v
	}
	return def
}

func (r *reader) duration(name string, def time.Duration) time.Duration {
	v := r.str(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		r.bad(name, "not a duration such as 500ms or 2m: %q", v)
		return def
	}
	return d
}

func (r *reader) boolean(name string, def bool) bool {
	v := r.str(name, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		r.bad(name, "must be true or false, got %q", v)
		return def
	}
	return b
}

func (r *reader) integer(name string, def, lo, hi int, problem string) int {
	v := r.str(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		r.bad(name, "%s, got %q", problem, v)
		return def
	}
	return n
}
