package app_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/tetherhq/tether/app"
	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/devtools/oauthtest"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/jobs"
)

// oauthBundle is a Tether server, a real OAuth2 server (the zitadel example
// OP, in-process on localhost) and a provider "dev" linked to a pool.
type oauthBundle struct {
	tt     *testenv.Tether
	op     *oauthtest.Provider
	url    string
	pool   *app.Pool
	logs   *testenv.Buffer
	secret string
}

const clientSecret = "client-secret-that-must-never-leak"

func setupOAuth(t *testing.T) *oauthBundle {
	t.Helper()
	return setupServer(t, testenv.TetherOpts{})
}

// setupServer starts the whole service as `tether serve` wires it: engine,
// HTTP server with metrics and River UI, and a real OAuth2 provider.
func setupServer(t *testing.T, opts testenv.TetherOpts) *oauthBundle {
	t.Helper()
	logs := &testenv.Buffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.Logger = logger
	opts.Config = func(c *config.Config) { c.AllowedOrigins = []string{"https://app.example"} }
	tt := testenv.StartTether(t, opts)

	op, err := oauthtest.Start(context.Background(), oauthtest.Options{
		RedirectURIs: []string{tt.URL + app.CallbackPath}, ClientID: "tether", ClientSecret: clientSecret,
	})
	require.NoError(t, err)
	t.Cleanup(op.Close)

	kind, name, clientID, secret, scope, issuer := "generic_oidc", "Dev", "tether", clientSecret, "openid profile offline_access", op.Issuer
	_, err = tt.Service.ProviderCreate(context.Background(), &app.ProviderInput{
		ID: ptr("dev"), Kind: &kind, DisplayName: &name, ClientID: &clientID, ClientSecret: &secret, Scope: &scope, IssuerURL: &issuer,
	})
	require.NoError(t, err)
	pool := tt.Pool(t, "gpu", "dev", false)
	return &oauthBundle{tt: tt, op: op, url: tt.URL, pool: pool, logs: logs, secret: clientSecret}
}

func ptr[T any](v T) *T { return &v }

// browser is an HTTP client with its own cookies, signed in as user; it
// never follows redirects by itself.
func (b *oauthBundle) browser(t *testing.T, user string) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	tok, err := app.SignDevToken([]byte(testSecret), user, nil, time.Hour)
	require.NoError(t, err)
	u, _ := url.Parse(b.url)
	jar.SetCookies(u, []*http.Cookie{{Name: "tether_token", Value: tok, Path: "/"}})
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func get(t *testing.T, client *http.Client, rawURL string) (*http.Response, string) {
	t.Helper()
	resp, err := client.Get(rawURL)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

// authorize starts a flow and returns the provider URL it redirects to.
func (b *oauthBundle) authorize(t *testing.T, client *http.Client, nextURL string) *url.URL {
	t.Helper()
	resp, body := get(t, client, b.url+"/api/data/oauth2/providers/dev/authorize?next_url="+url.QueryEscape(nextURL))
	require.Equal(t, http.StatusFound, resp.StatusCode, body)
	loc, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	return loc
}

// login signs in at the provider and returns Tether's callback URL.
func (b *oauthBundle) login(t *testing.T, client *http.Client, authURL *url.URL) *url.URL {
	t.Helper()
	cb, err := b.op.Login(context.Background(), client, authURL.String(), b.op.Users[0])
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(cb.String(), b.url+app.CallbackPath), cb.String())
	return cb
}

// connect runs the whole flow for user and returns the callback response.
func (b *oauthBundle) connect(t *testing.T, client *http.Client) *http.Response {
	t.Helper()
	cb := b.login(t, client, b.authorize(t, client, "/ui/"))
	resp, body := get(t, client, cb.String())
	require.Equal(t, http.StatusFound, resp.StatusCode, body)
	require.Equal(t, "/ui/", resp.Header.Get("Location"))
	return resp
}

func (b *oauthBundle) connection(t *testing.T, user string) *app.Connection {
	t.Helper()
	conns, err := b.tt.Service.ConnectionList(context.Background(), &app.User{ID: user})
	require.NoError(t, err)
	require.Len(t, conns, 1)
	return conns[0]
}

func (b *oauthBundle) requireInvalidCallback(t *testing.T, client *http.Client, rawURL string) {
	t.Helper()
	resp, body := get(t, client, rawURL)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, body)
	requireErrorBody(t, []byte(body), app.EINVALID)
}

// token calls the token endpoint as user.
func (b *oauthBundle) token(t *testing.T, client *http.Client, id uuid.UUID) (int, app.AccessToken) {
	t.Helper()
	resp, body := get(t, client, b.url+"/api/data/oauth2/connections/"+id.String()+"/token")
	var tok app.AccessToken
	if resp.StatusCode == http.StatusOK {
		require.NoError(t, json.Unmarshal([]byte(body), &tok))
	}
	return resp.StatusCode, tok
}

// expireToken makes the stored access token expired, as time would.
func (b *oauthBundle) expireToken(t *testing.T, id uuid.UUID) {
	t.Helper()
	ctx := context.Background()
	var enc []byte
	require.NoError(t, b.tt.DB.QueryRow(ctx, "SELECT token_enc FROM oauth2_connections WHERE id = $1", id).Scan(&enc))
	aad := []byte("oauth2_connection/" + id.String() + "/token")
	plain, _, err := b.tt.Keys.Decrypt(enc, aad)
	require.NoError(t, err)
	var tok map[string]any
	require.NoError(t, json.Unmarshal(plain, &tok))
	tok["expiry"] = time.Now().Add(-time.Minute).Format(time.RFC3339Nano)
	plain, err = json.Marshal(tok)
	require.NoError(t, err)
	enc, err = b.tt.Keys.Encrypt(plain, aad)
	require.NoError(t, err)
	_, err = b.tt.DB.Exec(ctx, "UPDATE oauth2_connections SET token_enc = $2 WHERE id = $1", id, enc)
	require.NoError(t, err)
}

func (b *oauthBundle) storedRefreshToken(t *testing.T, id uuid.UUID) string {
	t.Helper()
	var enc []byte
	require.NoError(t, b.tt.DB.QueryRow(context.Background(), "SELECT token_enc FROM oauth2_connections WHERE id = $1", id).Scan(&enc))
	plain, _, err := b.tt.Keys.Decrypt(enc, []byte("oauth2_connection/"+id.String()+"/token"))
	require.NoError(t, err)
	var tok struct {
		RefreshToken string `json:"refresh_token"`
	}
	require.NoError(t, json.Unmarshal(plain, &tok))
	return tok.RefreshToken
}

func TestOAuthConnectFlow(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	alice := b.browser(t, "alice")

	authURL := b.authorize(t, alice, "/ui/")
	q := authURL.Query()
	require.Equal(t, "S256", q.Get("code_challenge_method"), "PKCE S256 is on")
	require.Len(t, q.Get("code_challenge"), 43)
	require.Equal(t, b.url+app.CallbackPath, q.Get("redirect_uri"), "the exact redirect URI")
	require.Len(t, q.Get("state"), 43)

	cb := b.login(t, alice, authURL)
	resp, _ := get(t, alice, cb.String())
	require.Equal(t, http.StatusFound, resp.StatusCode)
	require.Equal(t, "/ui/", resp.Header.Get("Location"))
	// The provider's token endpoint saw the verifier that matches the
	// challenge: zitadel refuses the exchange otherwise.
	require.Equal(t, 1, b.op.TokenRequests(oauthtest.GrantAuthorizationCode))

	conn := b.connection(t, "alice")
	require.Equal(t, app.StatusConnected, conn.Status)
	pools, err := b.tt.Service.PoolList(context.Background(), &app.User{ID: "alice"})
	require.NoError(t, err)
	require.Len(t, pools, 1, "read-your-writes: the pool shows at once")
	b.tt.WaitSynced(t, 15*time.Second)
	require.True(t, b.tt.CanView(t, "alice", b.pool.ID))

	status, tok := b.token(t, alice, conn.ID)
	require.Equal(t, http.StatusOK, status)
	require.NotEmpty(t, tok.AccessToken)

	t.Run("NoPlaintextAtRest", func(t *testing.T) {
		refresh := b.storedRefreshToken(t, conn.ID)
		require.NotEmpty(t, refresh)
		for _, table := range []string{"oauth2_connections", "oauth2_providers", "oauth2_states", "oauth2_token_revocations", "river_job", "sync_state"} {
			var dump string
			require.NoError(t, b.tt.DB.QueryRow(context.Background(),
				fmt.Sprintf("SELECT COALESCE(string_agg(t::text, ' '), '') FROM %s t", table)).Scan(&dump))
			for _, secret := range []string{tok.AccessToken, refresh, clientSecret} {
				require.NotContains(t, dump, secret, "a secret in plain text in %s", table)
			}
		}
	})

	t.Run("NoSecretsInLogs", func(t *testing.T) {
		logs := b.logs.String()
		require.NotEmpty(t, logs, "the run logged at debug")
		for _, secret := range []string{tok.AccessToken, b.storedRefreshToken(t, conn.ID), clientSecret, cb.Query().Get("code"), cb.Query().Get("state")} {
			require.NotContains(t, logs, secret)
		}
	})
}

func TestOAuthStateChecks(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	ctx := context.Background()

	t.Run("Replayed", func(t *testing.T) {
		alice := b.browser(t, "alice-replay")
		cb := b.login(t, alice, b.authorize(t, alice, "/ui/"))
		resp, _ := get(t, alice, cb.String())
		require.Equal(t, http.StatusFound, resp.StatusCode)
		b.requireInvalidCallback(t, alice, cb.String())
	})

	t.Run("Expired", func(t *testing.T) {
		alice := b.browser(t, "alice-expired")
		cb := b.login(t, alice, b.authorize(t, alice, "/ui/"))
		_, err := b.tt.DB.Exec(ctx, "UPDATE oauth2_states SET expires_at = now() - interval '1 second' WHERE user_id = 'alice-expired'")
		require.NoError(t, err)
		// Told it expired (the state was hers), back to next_url, nothing stored.
		resp, body := get(t, alice, cb.String())
		require.Equal(t, http.StatusFound, resp.StatusCode, body)
		require.Equal(t, "/ui/?error=authorization_expired", resp.Header.Get("Location"))
		require.Zero(t, countRows(t, b, "SELECT count(*) FROM oauth2_connections WHERE user_id = 'alice-expired'"))
		b.requireInvalidCallback(t, alice, cb.String()) // and used up
	})

	t.Run("OtherUser", func(t *testing.T) {
		alice := b.browser(t, "alice-other")
		cb := b.login(t, alice, b.authorize(t, alice, "/ui/"))
		// Mallory's browser session gets the victim's callback (forced linking).
		mallory := b.browser(t, "mallory")
		b.requireInvalidCallback(t, mallory, cb.String())
		conns, err := b.tt.Service.ConnectionList(ctx, &app.User{ID: "mallory"})
		require.NoError(t, err)
		require.Empty(t, conns)
		// And the state is spent: not even its owner can use it now.
		b.requireInvalidCallback(t, alice, cb.String())
	})

	t.Run("OtherBrowser", func(t *testing.T) {
		alice := b.browser(t, "alice-browser")
		cb := b.login(t, alice, b.authorize(t, alice, "/ui/"))
		sameUserOtherBrowser := b.browser(t, "alice-browser") // no binding cookie
		b.requireInvalidCallback(t, sameUserOtherBrowser, cb.String())
	})

	t.Run("Tampered", func(t *testing.T) {
		alice := b.browser(t, "alice-tamper")
		cb := b.login(t, alice, b.authorize(t, alice, "/ui/"))
		q := cb.Query()
		state := []byte(q.Get("state"))
		state[0] ^= 1
		q.Set("state", string(state))
		cb.RawQuery = q.Encode()
		b.requireInvalidCallback(t, alice, cb.String())
		b.requireInvalidCallback(t, alice, b.url+app.CallbackPath+"?code=x")
		b.requireInvalidCallback(t, alice, b.url+app.CallbackPath+"?code=x&state="+strings.Repeat("A", 500))
	})

	t.Run("CodeReplay", func(t *testing.T) {
		alice := b.browser(t, "alice-code")
		cb := b.login(t, alice, b.authorize(t, alice, "/ui/"))
		resp, _ := get(t, alice, cb.String())
		require.Equal(t, http.StatusFound, resp.StatusCode)
		// A fresh state with the spent code: the provider refuses the code.
		fresh := b.authorize(t, alice, "/ui/")
		replay := b.url + app.CallbackPath + "?code=" + url.QueryEscape(cb.Query().Get("code")) + "&state=" + url.QueryEscape(fresh.Query().Get("state"))
		resp, _ = get(t, alice, replay)
		require.Equal(t, http.StatusFound, resp.StatusCode)
		require.Equal(t, "/ui/?error=exchange_failed", resp.Header.Get("Location"))
		require.Equal(t, app.StatusConnected, b.connection(t, "alice-code").Status, "a failed re-authorization keeps the existing access")
	})

	t.Run("AccessDenied", func(t *testing.T) {
		alice := b.browser(t, "alice-denied")
		authURL := b.authorize(t, alice, "/ui/?tab=services")
		denied := b.url + app.CallbackPath + "?error=access_denied&error_description=%3Cscript%3E&state=" + url.QueryEscape(authURL.Query().Get("state"))
		resp, _ := get(t, alice, denied)
		require.Equal(t, http.StatusFound, resp.StatusCode)
		require.Equal(t, "/ui/?tab=services&error=access_denied", resp.Header.Get("Location"))
		conns, err := b.tt.Service.ConnectionList(ctx, &app.User{ID: "alice-denied"})
		require.NoError(t, err)
		require.Empty(t, conns, "a denied connect ends its pending connection")
		require.Zero(t, countRows(t, b, "SELECT count(*) FROM oauth2_connections WHERE user_id = 'alice-denied'"), "nothing stored")
	})

	t.Run("NoNextURL", func(t *testing.T) {
		alice := b.browser(t, "alice-nonext")
		cb := b.login(t, alice, b.authorize(t, alice, ""))
		resp, body := get(t, alice, cb.String())
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.JSONEq(t, `{"status":"OK"}`, body)
	})

	t.Run("BadNextURL", func(t *testing.T) {
		alice := b.browser(t, "alice-next")
		for _, next := range []string{"//evil.example/x", "/\\evil.example", "javascript:alert(1)", "https://evil.example/",
			"http://app.example/", "https://app.example.evil.example/", "https://user@app.example/", "relative/path",
			"/ok\r\nSet-Cookie: x", "data:text/html,hi", "\\\\evil.example", "https:evil.example", " /leading-space"} {
			resp, body := get(t, alice, b.url+"/api/data/oauth2/providers/dev/authorize?next_url="+url.QueryEscape(next))
			require.Equal(t, http.StatusBadRequest, resp.StatusCode, "next_url %q: %s", next, body)
			requireErrorBody(t, []byte(body), app.EINVALID)
		}
		for _, next := range []string{"/ui/", "/a/b?c=d#e", "https://app.example/welcome", "https://APP.example/x"} {
			resp, body := get(t, alice, b.url+"/api/data/oauth2/providers/dev/authorize?next_url="+url.QueryEscape(next))
			require.Equal(t, http.StatusFound, resp.StatusCode, "next_url %q: %s", next, body)
		}
	})
}

func TestOAuthTokens(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	ctx := context.Background()

	t.Run("RefreshRotates", func(t *testing.T) {
		alice := b.browser(t, "alice-refresh")
		b.connect(t, alice)
		conn := b.connection(t, "alice-refresh")
		_, before := b.token(t, alice, conn.ID)
		oldRefresh := b.storedRefreshToken(t, conn.ID)
		refreshes := b.op.TokenRequests(oauthtest.GrantRefreshToken)
		b.expireToken(t, conn.ID)
		status, after := b.token(t, alice, conn.ID)
		require.Equal(t, http.StatusOK, status)
		require.NotEqual(t, before.AccessToken, after.AccessToken)
		require.Equal(t, refreshes+1, b.op.TokenRequests(oauthtest.GrantRefreshToken))
		require.NotEqual(t, oldRefresh, b.storedRefreshToken(t, conn.ID), "the rotated refresh token is persisted")
		status, again := b.token(t, alice, conn.ID)
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, after.AccessToken, again.AccessToken, "a fresh token is not refreshed again")
	})

	t.Run("ConcurrentRefreshOneProviderCall", func(t *testing.T) {
		alice := b.browser(t, "alice-concurrent")
		b.connect(t, alice)
		conn := b.connection(t, "alice-concurrent")
		b.expireToken(t, conn.ID)
		b.op.SetTokenDelay(300 * time.Millisecond)
		defer b.op.SetTokenDelay(0)
		refreshes := b.op.TokenRequests(oauthtest.GrantRefreshToken)
		var wg sync.WaitGroup
		results := make([]app.AccessToken, 2)
		statuses := make([]int, 2)
		for i := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				statuses[i], results[i] = b.token(t, alice, conn.ID)
			}()
		}
		wg.Wait()
		require.Equal(t, []int{http.StatusOK, http.StatusOK}, statuses)
		require.Equal(t, results[0].AccessToken, results[1].AccessToken)
		require.Equal(t, refreshes+1, b.op.TokenRequests(oauthtest.GrantRefreshToken), "one provider call for both")
	})

	t.Run("ProviderRevokedTheGrant", func(t *testing.T) {
		alice := b.browser(t, "alice-revoked")
		b.connect(t, alice)
		conn := b.connection(t, "alice-revoked")
		b.tt.WaitSynced(t, 15*time.Second)
		require.True(t, b.tt.CanView(t, "alice-revoked", b.pool.ID))
		revokeAtProvider(t, b.op, b.storedRefreshToken(t, conn.ID))
		b.expireToken(t, conn.ID)
		resp, body := get(t, alice, b.url+"/api/data/oauth2/connections/"+conn.ID.String()+"/token")
		require.Equal(t, http.StatusConflict, resp.StatusCode, body)
		requireErrorBody(t, []byte(body), app.ECONFLICT)
		require.Equal(t, app.StatusError, b.connection(t, "alice-revoked").Status)
		b.tt.WaitSynced(t, 15*time.Second)
		require.False(t, b.tt.CanView(t, "alice-revoked", b.pool.ID), "a broken connection loses its access")
	})

	t.Run("DisconnectRevokesAtProvider", func(t *testing.T) {
		alice := b.browser(t, "alice-disconnect")
		b.connect(t, alice)
		conn := b.connection(t, "alice-disconnect")
		refresh := b.storedRefreshToken(t, conn.ID)
		b.op.SetDown(true) // the provider being down never blocks the user
		revokes := b.op.RevokeRequests()
		req, err := http.NewRequest(http.MethodDelete, b.url+"/api/data/oauth2/connections/"+conn.ID.String(), nil)
		require.NoError(t, err)
		resp, err := alice.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusNoContent, resp.StatusCode)
		require.Eventually(t, func() bool { return b.op.RevokeRequests() > revokes }, 10*time.Second, 10*time.Millisecond)
		b.op.SetDown(false)
		require.Eventually(t, func() bool {
			var left int
			require.NoError(t, b.tt.DB.QueryRow(ctx, "SELECT count(*) FROM oauth2_token_revocations").Scan(&left))
			return left == 0
		}, 20*time.Second, 20*time.Millisecond, "the revocation is retried until the provider answers")
		_, err = b.op.Config(b.url+app.CallbackPath).TokenSource(ctx, expiredToken(refresh)).Token()
		require.ErrorContains(t, err, "invalid_grant", "the refresh token is revoked at the provider")
		var args string
		require.NoError(t, b.tt.DB.QueryRow(ctx, "SELECT string_agg(args::text, ' ') FROM river_job WHERE kind = $1", jobs.RevokeTokenArgs{}.Kind()).Scan(&args))
		require.NotContains(t, args, refresh, "job args hold ids only")
	})
}

func revokeAtProvider(t *testing.T, op *oauthtest.Provider, refreshToken string) {
	t.Helper()
	form := url.Values{"token": {refreshToken}, "token_type_hint": {"refresh_token"}}
	req, err := http.NewRequest(http.MethodPost, op.RevocationURL, strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(op.ClientID, op.ClientSecret)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func expiredToken(refresh string) *oauth2.Token {
	return &oauth2.Token{RefreshToken: refresh, Expiry: time.Now().Add(-time.Minute)}
}

// Rotation: put a new key first, run RotateKeys, drop the old key: every
// secret still opens.
func TestKeyRotation(t *testing.T) {
	t.Parallel()
	b := setupOAuth(t)
	ctx := context.Background()
	alice := b.browser(t, "alice")
	b.connect(t, alice)
	conn := b.connection(t, "alice")

	newKey := "k2:" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	both, err := keyring.Parse(newKey + "," + testenv.TestKeyRing)
	require.NoError(t, err)
	svc := *b.tt.Service
	svc.Keys = both
	report, err := svc.RotateKeys(ctx)
	require.NoError(t, err)
	require.Equal(t, 2, report.ReEncrypted, "the client secret and the token")
	require.Zero(t, report.Undecryptable)
	again, err := svc.RotateKeys(ctx)
	require.NoError(t, err)
	require.Zero(t, again.ReEncrypted, "idempotent")

	onlyNew, err := keyring.Parse(newKey)
	require.NoError(t, err)
	svc.Keys = onlyNew
	tok, err := svc.ConnectionToken(ctx, &app.User{ID: "alice"}, conn.ID)
	require.NoError(t, err)
	require.NotEmpty(t, tok.AccessToken)
}
