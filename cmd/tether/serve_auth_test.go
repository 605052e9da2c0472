package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/internal/devtools/oauthtest"
	"github.com/tetherhq/tether/internal/devtools/testenv"
)

// served is a `tether serve` running in the test.
type served struct {
	base   string
	stdout *testenv.Buffer
}

// startServe runs serve with e until the test ends, once /healthz answers.
func startServe(t *testing.T, e env) *served {
	t.Helper()
	e["TETHER_HTTP_ADDR"] = fmt.Sprintf("127.0.0.1:%d", closedPort(t))
	s := &served{base: "http://" + e["TETHER_HTTP_ADDR"], stdout: &testenv.Buffer{}}
	ctx, cancel := context.WithCancel(context.Background())
	var stderr testenv.Buffer
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		run(ctx, []string{"serve"}, e.getenv, s.stdout, &stderr)
	}()
	t.Cleanup(func() { cancel(); testenv.Await(t, exited, 30*time.Second, "serve stops") })
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("serve exited\nstdout: %s\nstderr: %s", s.stdout.String(), stderr.String())
		default:
		}
		if status, _ := s.get(t, "/healthz", ""); status == http.StatusOK {
			return s
		}
		require.True(t, time.Now().Before(deadline), "serve did not answer /healthz\nstderr: %s", stderr.String())
		time.Sleep(20 * time.Millisecond) // polling a port that opens, with a deadline
	}
}

func (s *served) get(t *testing.T, path, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.base+path, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// The production login path, issuer unreachable when serve starts: serve
// starts anyway, says so, is not ready and answers issuer tokens with 503
// (they may well be valid); once the issuer answers it is ready and they
// pass, with no restart.
func TestServeIssuerUnreachableAtStart(t *testing.T) {
	t.Parallel()
	issuer := oauthtest.StartIssuer(t)
	kid := issuer.AddKey(t, jwa.ES256())
	issuer.SetDown(true)
	e := newEnv(testenv.DatabaseURL(t))
	delete(e, "TETHER_AUTH_HMAC_SECRET")
	e["TETHER_AUTH_ISSUER"], e["TETHER_AUTH_AUDIENCE"], e["TETHER_LOG_LEVEL"] = issuer.URL, "tether-api", "info"
	testenv.SpiceDB(t, e.spiceDB()) // the schema is there: only the issuer is missing
	s := startServe(t, e)
	require.Contains(t, s.stdout.String(), "the token issuer cannot be reached")

	tok, err := jwt.NewBuilder().Issuer(issuer.URL).Audience([]string{"tether-api"}).Subject("alice").
		IssuedAt(time.Now()).Expiration(time.Now().Add(time.Hour)).Build()
	require.NoError(t, err)
	token := issuer.Sign(t, kid, jwa.ES256(), tok, nil)
	status, body := s.get(t, "/readyz", "")
	require.Equal(t, http.StatusServiceUnavailable, status, body)
	require.Contains(t, body, `"auth":"the token issuer's signing keys cannot be fetched"`)
	status, body = s.get(t, "/api/data/resource_pools", token)
	require.Equal(t, http.StatusServiceUnavailable, status, body)
	require.Contains(t, body, `"code":"unavailable"`)

	issuer.SetDown(false)
	// Fetches are at most one per 10 s: readiness turns within that.
	require.Eventually(t, func() bool {
		status, _ := s.get(t, "/readyz", "")
		return status == http.StatusOK
	}, 20*time.Second, 100*time.Millisecond, "ready once the issuer answers")
	status, body = s.get(t, "/api/data/resource_pools", token)
	require.Equal(t, http.StatusOK, status, body)
}

// Dev mode says it is on.
func TestServeDevModeWarns(t *testing.T) {
	t.Parallel()
	e := newEnv(testenv.DatabaseURL(t))
	e["TETHER_DEV_MODE"], e["TETHER_LOG_LEVEL"] = "true", "info"
	s := startServe(t, e)
	require.Eventually(t, func() bool {
		out := s.stdout.String()
		return strings.Contains(out, "TETHER_DEV_MODE is on") && strings.Contains(out, `"dev_mode":true`)
	}, 10*time.Second, 10*time.Millisecond)
}
