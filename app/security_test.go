package app_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/devtools/testenv"
)

// After a full run — connect, token, refresh, a failed and a refused
// request, disconnect with revocation at the provider — no secret appears in
// the logs, in any job (args, errors, metadata), in River UI's API, in
// /metrics, in any error body, or in any span (names, attributes, events,
// links, statuses, resource).
func TestSecretsNeverLeak(t *testing.T) {
	t.Parallel()
	spans := testenv.NewSpanRecorder(t)
	b := setupServer(t, testenv.TetherOpts{TracerProvider: spans})
	ctx := context.Background()
	alice := b.browser(t, "alice")
	authURL := b.authorize(t, alice, "/ui/")
	state := authURL.Query().Get("state")
	cb := b.login(t, alice, authURL)
	code := cb.Query().Get("code")
	resp, _ := get(t, alice, cb.String())
	require.Equal(t, http.StatusFound, resp.StatusCode)
	conn := b.connection(t, "alice")
	_, tok := b.token(t, alice, conn.ID)
	refresh := b.storedRefreshToken(t, conn.ID)
	b.expireToken(t, conn.ID)
	_, refreshed := b.token(t, alice, conn.ID)
	rotated := b.storedRefreshToken(t, conn.ID)

	var bodies []string
	collect := func(_ *http.Response, body string) { bodies = append(bodies, body) }
	collect(get(t, alice, cb.String()))                                     // replayed state
	collect(get(t, alice, b.url+app.CallbackPath+"?code="+code+"&state=x")) // bad state
	collect(get(t, b.browser(t, "mallory"), b.url+"/api/data/oauth2/connections/"+conn.ID.String()+"/token"))
	b.tt.WaitSynced(t, 15*time.Second)

	b.op.SetDown(true) // the revocation fails once and retries
	status, body := b.bearerDelete(t, "/api/data/oauth2/connections/"+conn.ID.String(), devToken(t, "alice", false))
	require.Equal(t, http.StatusNoContent, status, body)
	require.Eventually(t, func() bool {
		return countRows(t, b, "SELECT count(*) FROM river_job WHERE kind = 'tether.revoke_token' AND cardinality(errors) > 0") > 0
	}, 10*time.Second, 20*time.Millisecond)
	b.op.SetDown(false)
	require.Eventually(t, func() bool { return countRows(t, b, "SELECT count(*) FROM oauth2_token_revocations") == 0 }, 20*time.Second, 20*time.Millisecond)

	admin := devToken(t, "root", true)
	var surfaces []string
	for _, st := range []string{"available", "running", "retryable", "completed", "cancelled", "discarded", "scheduled"} {
		_, page := b.bearerGet(t, "/riverui/api/jobs?state="+st+"&limit=1000", admin)
		surfaces = append(surfaces, page)
	}
	rows, err := b.tt.DB.Query(ctx, "SELECT id FROM river_job")
	require.NoError(t, err)
	for rows.Next() {
		var id int64
		require.NoError(t, rows.Scan(&id))
		_, page := b.bearerGet(t, fmt.Sprintf("/riverui/api/jobs/%d", id), admin)
		require.Contains(t, page, `"kind"`)
		surfaces = append(surfaces, page)
	}
	require.NoError(t, rows.Err())
	var jobRows string
	require.NoError(t, b.tt.DB.QueryRow(ctx, "SELECT string_agg(row_to_json(j)::text, ' ') FROM river_job j").Scan(&jobRows))
	_, metrics := b.bearerGet(t, "/metrics", "")
	b.tt.WaitSynced(t, 15*time.Second)
	spanText := spans.Text()
	surfaces = append(surfaces, jobRows, metrics, b.logs.String(), spanText)
	surfaces = append(surfaces, bodies...)
	require.Contains(t, jobRows, "tether.revoke_token", "the revocation job ran and is inspected")
	for _, span := range []string{`"GET /api/data/oauth2/callback"`, `"GET /api/data/oauth2/connections/:connection_id/token"`,
		`"river.work/tether.revoke_token" status=Error`, `"authzed.api.v1.PermissionsService/WriteRelationships"`, `"ConnectionSetToken"`} {
		require.Contains(t, spanText, span, "the run was traced and its spans are inspected")
	}

	secrets := map[string]string{
		"access token": tok.AccessToken, "refreshed access token": refreshed.AccessToken, "refresh token": refresh,
		"rotated refresh token": rotated, "client secret": clientSecret, "authorization code": code, "state": state,
		"JWT signing secret": testSecret, "SpiceDB key": b.tt.SpiceConfig.Token, "encryption key": strings.SplitN(testenv.TestKeyRing, ":", 2)[1],
	}
	for name, secret := range secrets {
		require.NotEmpty(t, secret, name)
		for i, s := range surfaces {
			require.NotContains(t, s, secret, "the %s shows in surface %d", name, i)
			require.NotContains(t, s, url.QueryEscape(secret), "the %s shows (escaped) in surface %d", name, i)
		}
	}
}

func countRows(t *testing.T, b *oauthBundle, query string) int {
	t.Helper()
	var n int
	require.NoError(t, b.tt.DB.QueryRow(context.Background(), query).Scan(&n))
	return n
}

// Cookies are HttpOnly and SameSite=Lax, and Secure when the public URL is https.
func TestCookieFlags(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	cookieOf := func(resp *http.Response, name string) *http.Cookie {
		for _, c := range resp.Cookies() {
			if c.Name == name {
				return c
			}
		}
		t.Fatalf("no %s cookie set", name)
		return nil
	}
	resp, _ := get(t, b.browser(t, "alice"), b.url+"/api/data/oauth2/providers/dev/authorize?next_url=/ui/")
	binding := cookieOf(resp, app.BindingCookie)
	require.True(t, binding.HttpOnly)
	require.Equal(t, http.SameSiteLaxMode, binding.SameSite)
	require.False(t, binding.Secure, "plain http in this test")
	require.Equal(t, int(app.StateTTL/time.Second), binding.MaxAge)

	form := url.Values{"user": {"alice"}}
	loginResp, err := b.browser(t, "nobody").PostForm(b.url+"/ui/dev/login", form)
	require.NoError(t, err)
	loginResp.Body.Close()
	auth := cookieOf(loginResp, "tether_token")
	require.True(t, auth.HttpOnly)
	require.Equal(t, http.SameSiteLaxMode, auth.SameSite)

	require.Empty(t, resp.Header.Get("Strict-Transport-Security"), "no HSTS over plain http")

	// With an https public URL every cookie is Secure, the binding cookie
	// takes the __Host- prefix (no sibling host can set it: Path=/, no
	// Domain), and every response carries HSTS.
	b.tt.Service.OAuth.PublicURL = &url.URL{Scheme: "https", Host: "tether.example"}
	resp, _ = get(t, b.browser(t, "alice"), b.url+"/api/data/oauth2/providers/dev/authorize?next_url=/ui/")
	hostBinding := cookieOf(resp, app.SecureBindingCookie)
	require.True(t, hostBinding.Secure)
	require.Equal(t, "/", hostBinding.Path)
	require.Empty(t, hostBinding.Domain)
	require.Equal(t, "max-age=63072000; includeSubDomains", resp.Header.Get("Strict-Transport-Security"))
	loginResp, err = b.browser(t, "nobody").PostForm(b.url+"/ui/dev/login", form)
	require.NoError(t, err)
	loginResp.Body.Close()
	require.True(t, cookieOf(loginResp, "tether_token").Secure)
	for _, path := range []string{"/healthz", "/api/data/spec.json", "/api/data/oauth2/connections", "/ui/"} {
		resp, _ := get(t, b.browser(t, "alice"), b.url+path)
		require.NotEmpty(t, resp.Header.Get("Strict-Transport-Security"), path)
	}
}

// Cookie tossing: a sibling host (evil.example.org next to
// tether.example.org) plants its own tether_token or binding cookie for the
// parent domain, with a more specific path so the browser sends it first.
// Tether refuses any request carrying either cookie twice, whichever comes
// first.
func TestCookieTossing(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	alice, mallory := devToken(t, "alice", false), devToken(t, "mallory", false)
	b.connect(t, b.browser(t, "mallory"))
	send := func(path, cookies string) (int, string) {
		req, err := http.NewRequest(http.MethodGet, b.url+path, nil)
		require.NoError(t, err)
		req.Header.Set("Cookie", cookies)
		resp, err := http.DefaultTransport.RoundTrip(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}
	for _, cookies := range []string{
		"tether_token=" + mallory + "; tether_token=" + alice,
		"tether_token=" + alice + "; tether_token=" + mallory,
		"tether_token=" + alice + "; tether_token=" + alice,
	} {
		for _, path := range []string{"/api/data/oauth2/connections", "/api/data/oauth2/providers/dev/authorize?next_url=/ui/", "/ui/"} {
			status, body := send(path, cookies)
			require.Equal(t, http.StatusUnauthorized, status, "%s: %s", path, body)
			requireErrorBody(t, []byte(body), app.EUNAUTHORIZED)
		}
	}
	// The planted binding cookie: the victim's flow fails, it never
	// completes under the planter's binding.
	victim := b.browser(t, "alice")
	cb := b.login(t, victim, b.authorize(t, victim, "/ui/"))
	u, _ := url.Parse(b.url + app.CallbackPath)
	binding := ""
	for _, c := range victim.Jar.Cookies(u) {
		if c.Name == app.BindingCookie {
			binding = c.Value
		}
	}
	require.NotEmpty(t, binding)
	status, body := send(strings.TrimPrefix(cb.String(), b.url),
		"tether_token="+alice+"; "+app.BindingCookie+"=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; "+app.BindingCookie+"="+binding)
	require.Equal(t, http.StatusBadRequest, status, body)
	conns, err := b.tt.Service.ConnectionList(context.Background(), &app.User{ID: "alice"})
	require.NoError(t, err)
	for _, c := range conns {
		require.NotEqual(t, app.StatusConnected, c.Status, "nothing connected")
	}
}

// The page carries a strict CSP and the usual security headers, and has no
// inline script to need exceptions for.
func TestPageSecurityHeaders(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	for _, path := range []string{"/ui/", "/ui/dev/login"} {
		resp, body := get(t, b.browser(t, "alice"), b.url+path)
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		h := resp.Header
		csp := h.Get("Content-Security-Policy")
		for _, directive := range []string{"default-src 'none'", "style-src 'self'", "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'"} {
			require.Contains(t, csp, directive, path)
		}
		require.NotContains(t, csp, "unsafe-inline")
		require.Equal(t, "nosniff", h.Get("X-Content-Type-Options"))
		require.Equal(t, "DENY", h.Get("X-Frame-Options"))
		require.Equal(t, "no-referrer", h.Get("Referrer-Policy"))
		require.Equal(t, "no-store", h.Get("Cache-Control"))
		require.True(t, strings.HasPrefix(h.Get("Content-Type"), "text/html"))
		require.NotContains(t, strings.ToLower(body), "<script", path)
		require.NotRegexp(t, `(?i)\son[a-z]+\s*=`, body, "no inline event handlers (onclick=, onload=…)")
	}
}
