package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/internal/config"
)

const (
	testKeys   = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
	testSecret = "0123456789abcdef0123456789abcdef"
)

// env is a minimal valid serve environment with overrides; a value of "-"
// unsets a variable.
func env(overrides map[string]string) func(string) string {
	vars := map[string]string{
		"TETHER_DATABASE_URL":     "postgres://u@db:5432/tether",
		"TETHER_SPICEDB_ENDPOINT": "spicedb:50051",
		"TETHER_ENCRYPTION_KEYS":  testKeys,
		"TETHER_AUTH_HMAC_SECRET": testSecret,
	}
	for k, v := range overrides {
		if v == "-" {
			delete(vars, k)
		} else {
			vars[k] = v
		}
	}
	return func(name string) string { return vars[name] }
}

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := config.Load(env(nil), config.ScopeServe)
	require.NoError(t, err)
	want := config.Defaults()
	require.Equal(t, want.Workers, cfg.Workers)
	require.Equal(t, "127.0.0.1:8080", cfg.HTTPAddr)
	require.Equal(t, "http://127.0.0.1:8080", cfg.PublicURL.String(), "the public URL defaults to the listen address")
	require.Equal(t, "tether-admin", cfg.AuthAdminRole)
	require.Equal(t, "tether_token", cfg.AuthCookie)
	require.Equal(t, "info", cfg.LogLevel)
	require.False(t, cfg.DevMode)
	require.Equal(t, "k1", cfg.EncryptionKeys.PrimaryKeyID())
}

func TestLoadParsesValues(t *testing.T) {
	t.Parallel()
	cfg, err := config.Load(env(map[string]string{
		"TETHER_MAX_WORKERS": "7", "TETHER_SPICEDB_WRITE_FLUSHERS": "0", "TETHER_JOB_TIMEOUT": "5s",
		"TETHER_RESCUE_STUCK_JOBS_AFTER": "6s", "TETHER_PUBLIC_URL": "https://tether.example.org/base/",
		"TETHER_ALLOWED_ORIGINS": " https://App.Example.org , http://localhost:3000/", "TETHER_LOG_LEVEL": "DEBUG",
		"TETHER_SPICEDB_INSECURE": "true", "TETHER_RECONCILE_INTERVAL": "0", "TETHER_WORKER_LEASE_TTL": "3s",
		"TETHER_SELF_HEALING": "false", "TETHER_SYNC_HANDOFF_GRACE": "0",
	}), config.ScopeServe)
	require.NoError(t, err)
	require.Equal(t, 7, cfg.MaxWorkers)
	require.Equal(t, 3*time.Second, cfg.WorkerLeaseTTL)
	require.Equal(t, 0, cfg.WriteFlushers)
	require.Equal(t, 5*time.Second, cfg.JobTimeout)
	require.Equal(t, time.Duration(0), cfg.ReconcileInterval)
	require.Equal(t, "https://tether.example.org/base", cfg.PublicURL.String(), "a trailing slash is dropped")
	require.Equal(t, []string{"https://app.example.org", "http://localhost:3000"}, cfg.AllowedOrigins)
	require.Equal(t, "debug", cfg.LogLevel)
	require.True(t, cfg.SpiceDBInsecure)
	require.False(t, cfg.SelfHealing)
	require.Zero(t, cfg.HandOffGrace, "0 turns the hand-off off")
}

// TestLoadRules checks each rule, cross-field ones included: the variable
// named in the error, and the problem.
func TestLoadRules(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		scope    config.Scope
		env      map[string]string
		variable string
		problem  string
	}{
		{"database required", config.ScopeDatabase, map[string]string{"TETHER_DATABASE_URL": "-"}, "TETHER_DATABASE_URL", "required"},
		{"database scheme", config.ScopeDatabase, map[string]string{"TETHER_DATABASE_URL": "mysql://x"}, "TETHER_DATABASE_URL", "postgres://"},
		{"spicedb required", config.ScopeDatabase, map[string]string{"TETHER_SPICEDB_ENDPOINT": "-"}, "TETHER_SPICEDB_ENDPOINT", "required"},
		{"spicedb host:port", config.ScopeDatabase, map[string]string{"TETHER_SPICEDB_ENDPOINT": "spicedb"}, "TETHER_SPICEDB_ENDPOINT", "host:port"},
		{"insecure bool", config.ScopeDatabase, map[string]string{"TETHER_SPICEDB_INSECURE": "yes please"}, "TETHER_SPICEDB_INSECURE", "true or false"},
		{"log level", config.ScopeDatabase, map[string]string{"TETHER_LOG_LEVEL": "loud"}, "TETHER_LOG_LEVEL", "debug, info"},
		{"workers range", config.ScopeDatabase, map[string]string{"TETHER_MAX_WORKERS": "0"}, "TETHER_MAX_WORKERS", "1 to 10000"},
		{"workers number", config.ScopeDatabase, map[string]string{"TETHER_MAX_WORKERS": "many"}, "TETHER_MAX_WORKERS", "1 to 10000"},
		{"flushers range", config.ScopeDatabase, map[string]string{"TETHER_SPICEDB_WRITE_FLUSHERS": "257"}, "TETHER_SPICEDB_WRITE_FLUSHERS", "0 (no group commit) to 256"},
		{"duration syntax", config.ScopeDatabase, map[string]string{"TETHER_JOB_TIMEOUT": "30"}, "TETHER_JOB_TIMEOUT", "duration"},
		{"duration negative", config.ScopeDatabase, map[string]string{"TETHER_RETRY_MAX_BACKOFF": "-1s"}, "TETHER_RETRY_MAX_BACKOFF", "duration"},
		{"rescue after job timeout", config.ScopeDatabase, map[string]string{"TETHER_JOB_TIMEOUT": "1m", "TETHER_RESCUE_STUCK_JOBS_AFTER": "1m"}, "TETHER_RESCUE_STUCK_JOBS_AFTER", "longer than TETHER_JOB_TIMEOUT"},
		{"hand-off grace too short", config.ScopeDatabase, map[string]string{"TETHER_SYNC_HANDOFF_GRACE": "100ms"}, "TETHER_SYNC_HANDOFF_GRACE", "0 (off) or from 200ms to 1m"},
		{"hand-off grace too long", config.ScopeDatabase, map[string]string{"TETHER_SYNC_HANDOFF_GRACE": "2m"}, "TETHER_SYNC_HANDOFF_GRACE", "0 (off) or from 200ms to 1m"},
		{"lease at least a second", config.ScopeDatabase, map[string]string{"TETHER_WORKER_LEASE_TTL": "500ms"}, "TETHER_WORKER_LEASE_TTL", "from 1s to 10m"},
		{"lease at most 10 minutes", config.ScopeDatabase, map[string]string{"TETHER_WORKER_LEASE_TTL": "11m", "TETHER_RESCUE_STUCK_JOBS_AFTER": "1h"}, "TETHER_WORKER_LEASE_TTL", "from 1s to 10m"},
		{"lease under the rescue horizon", config.ScopeDatabase, map[string]string{"TETHER_WORKER_LEASE_TTL": "2m"}, "TETHER_WORKER_LEASE_TTL", "shorter than TETHER_RESCUE_STUCK_JOBS_AFTER"},
		{"poll not under cooldown", config.ScopeDatabase, map[string]string{"TETHER_FETCH_COOLDOWN": "1s", "TETHER_FETCH_POLL_INTERVAL": "500ms"}, "TETHER_FETCH_POLL_INTERVAL", "COOLDOWN"},
		{"keys required by serve", config.ScopeServe, map[string]string{"TETHER_ENCRYPTION_KEYS": "-"}, "TETHER_ENCRYPTION_KEYS", ""},
		{"keys parsed when set", config.ScopeDatabase, map[string]string{"TETHER_ENCRYPTION_KEYS": "bad"}, "TETHER_ENCRYPTION_KEYS", ""},
		{"public url absolute", config.ScopeServe, map[string]string{"TETHER_PUBLIC_URL": "/relative"}, "TETHER_PUBLIC_URL", "absolute"},
		{"public url no query", config.ScopeServe, map[string]string{"TETHER_PUBLIC_URL": "https://t.example?x=1"}, "TETHER_PUBLIC_URL", "without query"},
		{"origin shape", config.ScopeServe, map[string]string{"TETHER_ALLOWED_ORIGINS": "https://a.example/path"}, "TETHER_ALLOWED_ORIGINS", "not an origin"},
		{"hmac length", config.ScopeServe, map[string]string{"TETHER_AUTH_HMAC_SECRET": "short"}, "TETHER_AUTH_HMAC_SECRET", "32 characters"},
		{"some auth required", config.ScopeServe, map[string]string{"TETHER_AUTH_HMAC_SECRET": "-"}, "TETHER_AUTH_HMAC_SECRET", "without one no request"},
		{"issuer url", config.ScopeServe, map[string]string{"TETHER_AUTH_ISSUER": "idp", "TETHER_AUTH_AUDIENCE": "tether"}, "TETHER_AUTH_ISSUER", "issuer's URL"},
		{"issuer needs audience", config.ScopeServe, map[string]string{"TETHER_AUTH_ISSUER": "https://idp.example"}, "TETHER_AUTH_AUDIENCE", "required with TETHER_AUTH_ISSUER"},
		{"dev mode bool", config.ScopeServe, map[string]string{"TETHER_DEV_MODE": "maybe"}, "TETHER_DEV_MODE", "true or false"},
		{"trace exporter", config.ScopeDatabase, map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER", "otlp or none"},
		{"trace protocol", config.ScopeDatabase, map[string]string{"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf or grpc"},
		{"traces protocol", config.ScopeDatabase, map[string]string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "udp"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf or grpc"},
		{"trace endpoint url", config.ScopeDatabase, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT", "http(s) URL"},
		{"traces endpoint url", config.ScopeDatabase, map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://c/v1/traces"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http(s) URL"},
		{"sdk disabled bool", config.ScopeDatabase, map[string]string{"OTEL_SDK_DISABLED": "nope"}, "OTEL_SDK_DISABLED", "true or false"},
		{"dev mode not over https", config.ScopeServe, map[string]string{"TETHER_DEV_MODE": "true", "TETHER_PUBLIC_URL": "https://t.example"}, "TETHER_DEV_MODE", "https"},
		{"dev mode on every interface", config.ScopeServe, map[string]string{"TETHER_DEV_MODE": "true", "TETHER_HTTP_ADDR": "0.0.0.0:8080"}, "TETHER_DEV_MODE", "loopback"},
		{"dev mode on an empty host", config.ScopeServe, map[string]string{"TETHER_DEV_MODE": "true", "TETHER_HTTP_ADDR": ":8080"}, "TETHER_DEV_MODE", "loopback"},
		{"dev mode on a public address", config.ScopeServe, map[string]string{"TETHER_DEV_MODE": "true", "TETHER_HTTP_ADDR": "203.0.113.7:8080"}, "TETHER_DEV_MODE", "loopback"},
		{"dev mode with an issuer", config.ScopeServe, map[string]string{"TETHER_DEV_MODE": "true", "TETHER_AUTH_ISSUER": "https://idp.example", "TETHER_AUTH_AUDIENCE": "tether"}, "TETHER_DEV_MODE", "TETHER_AUTH_ISSUER"},
		{"hmac secret with an issuer", config.ScopeServe, map[string]string{"TETHER_AUTH_ISSUER": "https://idp.example", "TETHER_AUTH_AUDIENCE": "tether"}, "TETHER_AUTH_HMAC_SECRET", "refused together with TETHER_AUTH_ISSUER"},
		{"cookie name", config.ScopeServe, map[string]string{"TETHER_AUTH_COOKIE": "tether token;"}, "TETHER_AUTH_COOKIE", "not a cookie name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.Load(env(tc.env), tc.scope)
			require.Error(t, err)
			var cfgErr *config.Error
			require.True(t, errors.As(err, &cfgErr), "error %v names no variable", err)
			require.Contains(t, err.Error(), tc.variable+": ")
			require.Contains(t, err.Error(), tc.problem)
		})
	}
}

func TestLoadReportsEveryProblemAtOnce(t *testing.T) {
	t.Parallel()
	_, err := config.Load(env(map[string]string{"TETHER_DATABASE_URL": "-", "TETHER_MAX_WORKERS": "0", "TETHER_LOG_LEVEL": "x"}), config.ScopeDatabase)
	require.Error(t, err)
	for _, v := range []string{"TETHER_DATABASE_URL", "TETHER_MAX_WORKERS", "TETHER_LOG_LEVEL"} {
		require.Contains(t, err.Error(), v)
	}
}

func TestDatabaseScopeIgnoresServeVariables(t *testing.T) {
	t.Parallel()
	cfg, err := config.Load(env(map[string]string{
		"TETHER_ENCRYPTION_KEYS": "-", "TETHER_AUTH_HMAC_SECRET": "-", "TETHER_PUBLIC_URL": "not a url",
	}), config.ScopeDatabase)
	require.NoError(t, err, "migrate, reconcile and status need neither keys nor auth")
	require.Nil(t, cfg.EncryptionKeys)
	require.Nil(t, cfg.PublicURL)
}

func TestDevModeNeedsHMACSecret(t *testing.T) {
	t.Parallel()
	_, err := config.Load(env(map[string]string{"TETHER_DEV_MODE": "true", "TETHER_AUTH_HMAC_SECRET": "-",
		"TETHER_AUTH_ISSUER": "https://idp.example", "TETHER_AUTH_AUDIENCE": "tether"}), config.ScopeServe)
	require.Error(t, err)
	require.True(t, strings.Contains(err.Error(), "TETHER_DEV_MODE: needs TETHER_AUTH_HMAC_SECRET"), err.Error())
}

// Tracing is off unless an OTLP endpoint is set, and off again when the SDK
// is disabled; the protocol defaults to http/protobuf.
func TestLoadTracing(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name        string
		env         map[string]string
		protocol    string
		serviceName string
	}{
		{"off by default", nil, "", ""},
		{"base endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, config.ProtocolHTTPProtobuf, ""},
		{"traces endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://c.example/v1/traces"}, config.ProtocolHTTPProtobuf, ""},
		{"grpc", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, config.ProtocolGRPC, ""},
		{"traces protocol wins", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
			"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, config.ProtocolGRPC, ""},
		{"service name", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SERVICE_NAME": "tether-eu"}, config.ProtocolHTTPProtobuf, "tether-eu"},
		{"sdk disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, "", ""},
		{"exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := config.Load(env(tc.env), config.ScopeServe)
			require.NoError(t, err)
			require.Equal(t, tc.protocol, cfg.TracesProtocol)
			require.Equal(t, tc.protocol != "", cfg.TracingOn())
			require.Equal(t, tc.serviceName, cfg.ServiceName)
		})
	}
}
