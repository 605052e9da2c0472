package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/devtools/oauthtest"
	"github.com/tetherhq/tether/internal/keyring"
)

// Tests of the second security round: each names the finding it closes.

// request sends method path with the given headers (a "" value deletes the
// header), body as is, never following redirects.
func request(t *testing.T, method, rawURL, body string, headers map[string]string) (int, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, rawURL, r)
	require.NoError(t, err)
	for k, v := range headers {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(out)
}

// counter is an HTTP server that counts what reaches it: where a redirect
// would have sent a token or a secret.
type counter struct {
	*httptest.Server
	hits atomic.Int64
}

func startCounter(t *testing.T) *counter {
	t.Helper()
	c := &counter{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"access_token":"stolen","token_type":"bearer","refresh_token":"stolen-refresh","expires_in":3600}`)
	}))
	t.Cleanup(c.Close)
	return c
}

// startRedirector answers every request with a 307 to target, which makes
// a client that follows it re-send method, body and (same host) headers.
func startRedirector(t *testing.T, target string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	t.Cleanup(s.Close)
	return s
}

// plainProvider creates a generic_oauth2 provider whose endpoints all live
// at base (a test server), with a client secret.
func (b *oauthBundle) plainProvider(t *testing.T, id, base string) {
	t.Helper()
	kind, name, clientID, secret := "generic_oauth2", "Provider "+id, "client-"+id, "secret-of-"+id
	authURL, tokenURL, revocationURL := base+"/auth", base+"/token", base+"/revoke"
	_, err := b.tt.Service.ProviderCreate(context.Background(), &app.ProviderInput{
		ID: &id, Kind: &kind, DisplayName: &name, ClientID: &clientID, ClientSecret: &secret,
		AuthorizationURL: &authURL, TokenURL: &tokenURL, RevocationURL: &revocationURL,
	})
	require.NoError(t, err)
}

// plantConnection connects user to provider with an expired access token
// and refresh token refresh, as an earlier flow would have left it.
func (b *oauthBundle) plantConnection(t *testing.T, user, provider, refresh string) uuid.UUID {
	t.Helper()
	conn := b.tt.Connect(t, user, provider)
	plain, err := json.Marshal(map[string]any{"access_token": "old-access", "refresh_token": refresh, "token_type": "bearer",
		"expiry": time.Now().Add(-time.Minute).Format(time.RFC3339Nano)})
	require.NoError(t, err)
	enc, err := b.tt.Keys.Encrypt(plain, keyring.TokenAAD(conn.ID.String()))
	require.NoError(t, err)
	_, err = b.tt.DB.Exec(context.Background(), "UPDATE oauth2_connections SET token_enc = $2 WHERE id = $1", conn.ID, enc)
	require.NoError(t, err)
	return conn.ID
}

// Finding 2: a mix-up of providers sharing the one redirect URI. Alice
// starts at "dev"; the response of another provider arrives with her
// state. Its iss says so: Tether refuses it before sending the code
// anywhere, and her state stays good for the real answer.
func TestOAuthMixUp(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	ctx := context.Background()
	honest, err := oauthtest.Start(ctx, oauthtest.Options{
		RedirectURIs: []string{b.url + app.CallbackPath}, ClientID: "tether", ClientSecret: "honest-secret", IssParameter: true,
	})
	require.NoError(t, err)
	t.Cleanup(honest.Close)
	kind, name, clientID, secret, scope, issuer := "generic_oidc", "Honest", "tether", "honest-secret", "openid offline_access", honest.Issuer
	_, err = b.tt.Service.ProviderCreate(ctx, &app.ProviderInput{ID: ptr("honest"), Kind: &kind, DisplayName: &name,
		ClientID: &clientID, ClientSecret: &secret, Scope: &scope, IssuerURL: &issuer})
	require.NoError(t, err)

	alice := b.browser(t, "alice")
	devAuth := b.authorize(t, alice, "/ui/")
	resp, body := get(t, alice, b.url+"/api/data/oauth2/providers/honest/authorize?next_url=/ui/")
	require.Equal(t, http.StatusFound, resp.StatusCode, body)
	honestAuth, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	honestCB, err := honest.Login(ctx, alice, honestAuth.String(), honest.Users[0])
	require.NoError(t, err)
	require.Equal(t, honest.Issuer, honestCB.Query().Get("iss"), "the honest provider identifies itself (RFC 9207)")

	callback := func(state, code string, iss *string) string {
		q := url.Values{"state": {state}, "code": {code}}
		if iss != nil {
			q.Set("iss", *iss)
		}
		return b.url + app.CallbackPath + "?" + q.Encode()
	}
	code := honestCB.Query().Get("code")
	devExchanges := b.op.TokenRequests(oauthtest.GrantAuthorizationCode)
	// The honest code under the state made for dev: refused, and dev's
	// token endpoint never sees the code.
	b.requireInvalidCallback(t, alice, callback(devAuth.Query().Get("state"), code, &honest.Issuer))
	require.Equal(t, devExchanges, b.op.TokenRequests(oauthtest.GrantAuthorizationCode), "the code leaked to another provider")
	// A forged iss for the honest state, and none where the honest
	// provider promises one: refused too.
	b.requireInvalidCallback(t, alice, callback(honestCB.Query().Get("state"), code, ptr("https://evil.example")))
	b.requireInvalidCallback(t, alice, callback(honestCB.Query().Get("state"), code, nil))
	conns, err := b.tt.Service.ConnectionList(ctx, &app.User{ID: "alice"})
	require.NoError(t, err)
	for _, c := range conns {
		require.Equal(t, app.StatusPending, c.Status, "nothing connected")
	}

	// Both states are unspent: the real answers complete.
	resp, body = get(t, alice, honestCB.String())
	require.Equal(t, http.StatusFound, resp.StatusCode, body)
	resp, body = get(t, alice, b.login(t, alice, devAuth).String())
	require.Equal(t, http.StatusFound, resp.StatusCode, body)
	require.Equal(t, "/ui/", resp.Header.Get("Location"))
}

// Finding 3: writes authenticated by the cookie must come from Tether's own
// origin, bodies must say they are JSON, and River UI is covered too.
func TestCrossOriginWrites(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	b.tt.WaitSynced(t, 15*time.Second)
	admin := devToken(t, "root", true)
	cookie := "tether_token=" + admin
	pools := b.url + "/api/data/resource_pools"
	jsonCookie := map[string]string{"Content-Type": "application/json", "Cookie": cookie}
	with := func(base map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range base {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	for name, headers := range map[string]map[string]string{
		"CrossSite":        with(jsonCookie, "Sec-Fetch-Site", "cross-site", "Origin", "https://evil.example"),
		"SameSiteSibling":  with(jsonCookie, "Sec-Fetch-Site", "same-site", "Origin", "https://evil.tether.example"),
		"OtherOriginOnly":  with(jsonCookie, "Origin", "https://evil.example"),
		"NullOriginOnly":   with(jsonCookie, "Origin", "null"),
		"NullCrossSite":    with(jsonCookie, "Origin", "null", "Sec-Fetch-Site", "cross-site"),
		"UnknownFetchSite": with(jsonCookie, "Sec-Fetch-Site", "cross-galaxy"),
		"OtherPort":        with(jsonCookie, "Origin", strings.Replace(b.url, "127.0.0.1:", "127.0.0.1:1", 1)),
	} {
		t.Run("Refused_"+name, func(t *testing.T) {
			status, body := request(t, http.MethodPost, pools, `{"name": "x"}`, headers)
			require.Equal(t, http.StatusForbidden, status, body)
			requireErrorBody(t, []byte(body), app.EFORBIDDEN)
		})
	}
	for name, headers := range map[string]map[string]string{
		// Tether's own pages.
		"SameOrigin":           with(jsonCookie, "Sec-Fetch-Site", "same-origin", "Origin", b.url),
		"SameOriginNullOrigin": with(jsonCookie, "Sec-Fetch-Site", "same-origin", "Origin", "null"),
		// Non-browser clients send neither header.
		"NoFetchMetadata": jsonCookie,
		// Not authenticated by the cookie: a bearer cannot be forged cross-site.
		"BearerCrossSite": {"Content-Type": "application/json", "Authorization": "Bearer " + admin, "Sec-Fetch-Site": "cross-site"},
	} {
		t.Run("Allowed_"+name, func(t *testing.T) {
			status, body := request(t, http.MethodPost, pools, `{"name": "x"}`, headers)
			require.Equal(t, http.StatusCreated, status, body)
		})
	}
	// A Blob body has no Content-Type, a string one is text/plain: neither
	// is parsed as JSON, whoever sends it.
	for name, ct := range map[string]string{"NoContentType": "", "TextPlain": "text/plain;charset=UTF-8", "MergePatch": "application/merge-patch+json"} {
		t.Run("Unsupported_"+name, func(t *testing.T) {
			status, body := request(t, http.MethodPost, pools, `{"name": "x"}`, map[string]string{"Content-Type": ct, "Cookie": cookie})
			require.Equal(t, http.StatusUnsupportedMediaType, status, body)
			requireErrorBody(t, []byte(body), app.EUNSUPPORTED)
		})
	}

	// River UI: its own page posts text/plain (fetch with a string body),
	// so the origin is what protects it.
	var jobID int64
	require.NoError(t, b.tt.DB.QueryRow(context.Background(), "SELECT id FROM river_job ORDER BY id LIMIT 1").Scan(&jobID))
	cancel := fmt.Sprintf(`{"ids": ["%d"]}`, jobID)
	riverHeaders := map[string]string{"Content-Type": "text/plain;charset=UTF-8", "Cookie": cookie}
	status, body := request(t, http.MethodPost, b.url+"/riverui/api/jobs/cancel", cancel, with(riverHeaders, "Sec-Fetch-Site", "same-site"))
	require.Equal(t, http.StatusForbidden, status, body)
	status, body = request(t, http.MethodPost, b.url+"/riverui/api/jobs/delete", cancel, with(riverHeaders, "Origin", "https://evil.example"))
	require.Equal(t, http.StatusForbidden, status, body)
	status, body = request(t, http.MethodPost, b.url+"/riverui/api/jobs/cancel", cancel, with(riverHeaders, "Sec-Fetch-Site", "same-origin", "Origin", b.url))
	require.Equal(t, http.StatusOK, status, "River UI's own requests still work: %s", body)

	// The page's form posts and the dev sign-in (login CSRF) too.
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"}
	status, body = request(t, http.MethodPost, b.url+"/ui/dev/login", "user=mallory&admin=true", form)
	require.Equal(t, http.StatusForbidden, status, body)
	status, body = request(t, http.MethodPost, b.url+"/ui/connections/"+uuid.NewString()+"/disconnect", "csrf="+csrfFor(admin),
		with(form, "Cookie", cookie))
	require.Equal(t, http.StatusForbidden, status, body)
}

// Finding 4: a PATCH that points a provider elsewhere must carry a new
// secret; then every token of the provider is dropped (revoked where it was
// issued), its connections break and its flows in flight are cancelled.
func TestProviderPatchMovesSecret(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	ctx := context.Background()
	alice := b.browser(t, "alice")
	b.connect(t, alice)
	conn := b.connection(t, "alice")
	refresh := b.storedRefreshToken(t, conn.ID)
	bob := b.browser(t, "bob")
	bobCB := b.login(t, bob, b.authorize(t, bob, "/ui/")) // a flow in flight
	b.tt.WaitSynced(t, 15*time.Second)
	require.True(t, b.tt.CanView(t, "alice", b.pool.ID))
	elsewhere := startCounter(t)
	admin := devToken(t, "root", true)
	patch := func(body string) (int, string) {
		return request(t, http.MethodPatch, b.url+"/api/data/oauth2/providers/dev", body,
			map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + admin})
	}

	var provider string
	require.NoError(t, b.tt.DB.QueryRow(ctx, "SELECT p::text FROM oauth2_providers p WHERE id = 'dev'").Scan(&provider))
	for _, body := range []string{
		`{"issuer_url": "` + elsewhere.URL + `"}`,
		`{"kind": "generic_oauth2", "authorization_url": "` + elsewhere.URL + `/a", "token_url": "` + elsewhere.URL + `/t"}`,
		`{"client_id": "another-client"}`,
	} {
		status, out := patch(body)
		require.Equal(t, http.StatusUnprocessableEntity, status, out)
		requireErrorBody(t, []byte(out), app.EUNPROCESSABLE)
	}
	var after string
	require.NoError(t, b.tt.DB.QueryRow(ctx, "SELECT p::text FROM oauth2_providers p WHERE id = 'dev'").Scan(&after))
	require.Equal(t, provider, after, "nothing changed")
	require.Equal(t, app.StatusConnected, b.connection(t, "alice").Status)
	status, out := patch(`{"display_name": "Renamed", "issuer_url": "` + b.op.Issuer + `"}`)
	require.Equal(t, http.StatusOK, status, "a change that keeps the endpoints needs no secret: %s", out)
	require.Equal(t, app.StatusConnected, b.connection(t, "alice").Status)

	status, out = patch(`{"issuer_url": "` + elsewhere.URL + `", "client_secret": "the-new-providers-secret"}`)
	require.Equal(t, http.StatusOK, status, out)
	require.Equal(t, app.StatusError, b.connection(t, "alice").Status, "users connect again")
	var tokenLeft bool
	require.NoError(t, b.tt.DB.QueryRow(ctx, "SELECT token_enc IS NOT NULL FROM oauth2_connections WHERE id = $1", conn.ID).Scan(&tokenLeft))
	require.False(t, tokenLeft, "the tokens are dropped")
	b.tt.WaitSynced(t, 15*time.Second)
	require.False(t, b.tt.CanView(t, "alice", b.pool.ID), "and the access with them")
	b.requireInvalidCallback(t, bob, bobCB.String())
	require.Zero(t, countRows(t, b, "SELECT count(*) FROM oauth2_connections WHERE user_id = 'bob'"), "bob's pending connection ended with his flow")
	// The dropped refresh token goes back to the provider that issued it.
	require.Eventually(t, func() bool {
		return countRows(t, b, "SELECT count(*) FROM oauth2_token_revocations") == 0
	}, 20*time.Second, 20*time.Millisecond)
	_, err := b.op.Config(b.url+app.CallbackPath).TokenSource(ctx, expiredToken(refresh)).Token()
	require.ErrorContains(t, err, "invalid_grant", "revoked at the old provider")
	require.Zero(t, elsewhere.hits.Load(), "no token, code or secret reached the new endpoints")
}

// Finding 6: Tether never follows a provider's redirect: a 307 from a token
// or revocation endpoint would re-send the refresh token and the client
// secret to wherever it points.
func TestProviderRedirectsNotFollowed(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	ctx := context.Background()
	catcher := startCounter(t)
	b.plainProvider(t, "hostile", startRedirector(t, catcher.URL).URL)
	alice := b.browser(t, "alice")
	conn := b.plantConnection(t, "alice", "hostile", "refresh-token-for-hostile")

	status, body := b.token(t, alice, conn)
	require.Equal(t, http.StatusBadGateway, status, "a redirect is a provider fault: %+v", body)

	resp, out := get(t, alice, b.url+"/api/data/oauth2/providers/hostile/authorize?next_url=/ui/")
	require.Equal(t, http.StatusFound, resp.StatusCode, out)
	loc, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	resp, out = get(t, alice, b.url+app.CallbackPath+"?code=the-code&state="+loc.Query().Get("state"))
	require.Equal(t, http.StatusFound, resp.StatusCode, out)
	require.Equal(t, "/ui/?error=exchange_failed", resp.Header.Get("Location"))

	status, out = b.bearerDelete(t, "/api/data/oauth2/connections/"+conn.String(), devToken(t, "alice", false))
	require.Equal(t, http.StatusNoContent, status, out)
	require.Eventually(t, func() bool { return countRows(t, b, "SELECT count(*) FROM oauth2_token_revocations") == 0 },
		20*time.Second, 20*time.Millisecond, "a redirecting revocation endpoint is given up on")

	// A discovery document that redirects is no document.
	kind, name, clientID, issuer := "generic_oidc", "OIDC", "c", startRedirector(t, catcher.URL).URL
	_, err = b.tt.Service.ProviderCreate(ctx, &app.ProviderInput{ID: ptr("hostile-oidc"), Kind: &kind, DisplayName: &name,
		ClientID: &clientID, ClientSecret: ptr("s"), IssuerURL: &issuer})
	require.NoError(t, err)
	resp, out = get(t, alice, b.url+"/api/data/oauth2/providers/hostile-oidc/authorize?next_url=/ui/")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, out)

	require.Zero(t, catcher.hits.Load(), "nothing followed a redirect")
}

// Finding 6: outside dev mode provider URLs are https (plain http only on
// loopback hosts).
func TestProviderURLsHTTPS(t *testing.T) {
	t.Parallel()
	b := setupHTTP(t, noDevMode())
	create := func(id, field, value string) (int, []byte) {
		body := map[string]any{"id": id, "kind": "generic_oauth2", "display_name": "x", "client_id": "y",
			"authorization_url": "https://idp.example/auth", "token_url": "https://idp.example/token"}
		body[field] = value
		return b.do(t, http.MethodPost, "/api/data/oauth2/providers", b.admin, body)
	}
	for i, tc := range []struct{ field, value string }{
		{"token_url", "http://idp.example/token"}, {"authorization_url", "http://idp.example/auth"},
		{"revocation_url", "http://10.0.0.7/revoke"}, {"token_url", "http://169.254.169.254/latest/meta-data"},
		{"token_url", "http://localhost.evil.example/token"},
	} {
		status, body := create(fmt.Sprint("plain", i), tc.field, tc.value)
		require.Equal(t, http.StatusUnprocessableEntity, status, "%s=%s: %s", tc.field, tc.value, body)
		requireErrorBody(t, body, app.EUNPROCESSABLE)
	}
	for i, value := range []string{"http://127.0.0.1:9000/token", "http://localhost:9000/token", "http://[::1]:9000/token", "https://idp.example/t"} {
		status, body := create(fmt.Sprint("ok", i), "token_url", value)
		require.Equal(t, http.StatusCreated, status, "%s: %s", value, body)
	}
}

// Finding 7: one oauth2.Config per provider with an explicit auth style: a
// refused refresh is sent once, with the secret in the Authorization
// header, never retried with it in the body (a replayed rotated refresh
// token can make a provider revoke the whole grant).
func TestRefusedRefreshSentOnce(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	alice := b.browser(t, "alice")
	b.connect(t, alice)
	conn := b.connection(t, "alice")
	revokeAtProvider(t, b.op, b.storedRefreshToken(t, conn.ID))
	b.expireToken(t, conn.ID)
	refreshes, inBody := b.op.TokenRequests(oauthtest.GrantRefreshToken), b.op.SecretsInBody()
	status, _ := b.token(t, alice, conn.ID)
	require.Equal(t, http.StatusConflict, status)
	require.Equal(t, refreshes+1, b.op.TokenRequests(oauthtest.GrantRefreshToken), "sent once")
	require.Equal(t, inBody, b.op.SecretsInBody(), "the secret never travels in the body")
}

// Finding 11: revocations outlive the provider: deleting it revokes its
// connections' tokens, and revocations queued before are kept.
func TestProviderDeleteRevokesTokens(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	ctx := context.Background()
	alice, bob := b.browser(t, "alice"), b.browser(t, "bob")
	b.connect(t, alice)
	b.connect(t, bob)
	aliceRefresh := b.storedRefreshToken(t, b.connection(t, "alice").ID)
	bobConn := b.connection(t, "bob")
	bobRefresh := b.storedRefreshToken(t, bobConn.ID)
	admin := devToken(t, "root", true)
	_, err := b.tt.Service.PoolUpdate(ctx, b.pool.ID, &app.PoolInput{Remote: app.Optional[app.Remote]{Set: true}})
	require.NoError(t, err)

	b.op.SetDown(true) // revocations wait
	status, out := b.bearerDelete(t, "/api/data/oauth2/connections/"+bobConn.ID.String(), devToken(t, "bob", false))
	require.Equal(t, http.StatusNoContent, status, out)
	status, out = b.bearerDelete(t, "/api/data/oauth2/providers/dev", admin)
	require.Equal(t, http.StatusNoContent, status, out)
	require.Equal(t, 2, countRows(t, b, "SELECT count(*) FROM oauth2_token_revocations"), "bob's, queued before, and alice's")
	require.Zero(t, countRows(t, b, "SELECT count(*) FROM oauth2_providers WHERE id = 'dev'"))

	b.op.SetDown(false)
	require.Eventually(t, func() bool { return countRows(t, b, "SELECT count(*) FROM oauth2_token_revocations") == 0 },
		30*time.Second, 20*time.Millisecond)
	for name, refresh := range map[string]string{"alice": aliceRefresh, "bob": bobRefresh} {
		_, err := b.op.Config(b.url+app.CallbackPath).TokenSource(ctx, expiredToken(refresh)).Token()
		require.ErrorContains(t, err, "invalid_grant", "%s's grant is revoked at the provider", name)
	}
}

// Finding 11: a re-authorization revokes the refresh token it replaces.
func TestReauthorizationRevokesReplacedToken(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	ctx := context.Background()
	alice := b.browser(t, "alice")
	b.connect(t, alice)
	conn := b.connection(t, "alice")
	first := b.storedRefreshToken(t, conn.ID)
	b.connect(t, alice)
	second := b.storedRefreshToken(t, conn.ID)
	require.NotEqual(t, first, second)
	require.Eventually(t, func() bool {
		return countRows(t, b, "SELECT count(*) FROM river_job WHERE kind = 'tether.revoke_token' AND state = 'completed'") == 1
	},
		20*time.Second, 20*time.Millisecond)
	_, err := b.op.Config(b.url+app.CallbackPath).TokenSource(ctx, expiredToken(first)).Token()
	require.ErrorContains(t, err, "invalid_grant", "the replaced grant is revoked")
	b.expireToken(t, conn.ID)
	status, _ := b.token(t, alice, conn.ID)
	require.Equal(t, http.StatusOK, status, "the new one works")
}

// Finding 12: at most 20 authorizations in flight per user (the oldest
// go), and an authorization started from another site adds no pending
// connection: a cross-site link to authorize (a top-level GET carries the
// Lax cookie) cannot put rows into a victim's list.
func TestAuthorizationStates(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	alice := b.browser(t, "alice")
	var states []*url.URL
	for range app.MaxStatesPerUser + 5 {
		states = append(states, b.authorize(t, alice, "/ui/"))
	}
	require.Equal(t, app.MaxStatesPerUser, countRows(t, b, "SELECT count(*) FROM oauth2_states WHERE user_id = 'alice'"))
	conns, err := b.tt.Service.ConnectionList(context.Background(), &app.User{ID: "alice"})
	require.NoError(t, err)
	require.Len(t, conns, 1, "one pending connection, however many authorizations")
	require.Equal(t, app.StatusPending, conns[0].Status)
	oldest := b.login(t, alice, states[0])
	b.requireInvalidCallback(t, alice, oldest.String())
	resp, body := get(t, alice, b.login(t, alice, states[len(states)-1]).String())
	require.Equal(t, http.StatusFound, resp.StatusCode, body)

	status, out := request(t, http.MethodGet, b.url+"/api/data/oauth2/providers/dev/authorize?next_url=/ui/", "",
		map[string]string{"Cookie": "tether_token=" + devToken(t, "victim", false), "Sec-Fetch-Site": "cross-site"})
	require.Equal(t, http.StatusFound, status, out)
	conns, err = b.tt.Service.ConnectionList(context.Background(), &app.User{ID: "victim"})
	require.NoError(t, err)
	require.Empty(t, conns, "nothing injected into the victim's list")
}

// Finding 13: a provider's error answer is read up to a bound and never
// logged or shown: only its status and error code.
func TestProviderErrorBodyNeverLogged(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	const marker = "provider-error-text-that-must-stay-out-of-logs"
	var status atomic.Int64
	status.Store(http.StatusBadRequest)
	loud := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		code := int(status.Load())
		w.WriteHeader(code)
		padding := ""
		if code == http.StatusBadRequest {
			padding = strings.Repeat("x", 2<<20) // past what Tether reads
		}
		_, _ = fmt.Fprintf(w, `{"error":"invalid_request","error_description":"%s %s"}`, marker, padding)
	}))
	t.Cleanup(loud.Close)
	b.plainProvider(t, "loud", loud.URL)
	alice := b.browser(t, "alice")
	conn := b.plantConnection(t, "alice", "loud", "refresh-for-loud")
	resp, body := get(t, alice, b.url+"/api/data/oauth2/connections/"+conn.String()+"/token")
	require.Equal(t, http.StatusBadGateway, resp.StatusCode, body)
	status.Store(http.StatusInternalServerError)
	resp, body2 := get(t, alice, b.url+"/api/data/oauth2/connections/"+conn.String()+"/token")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, body2)
	require.Contains(t, b.logs.String(), "500 Internal Server Error (error invalid_request)", "the failure is logged, as status and code")
	for _, surface := range []string{b.logs.String(), body, body2} {
		require.NotContains(t, surface, marker)
	}
}
