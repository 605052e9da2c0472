package oauthtest_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/net/html"
	"golang.org/x/oauth2"

	"github.com/tetherhq/tether/internal/devtools/oauthtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func newClient(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	require.NoError(t, err)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Jar:           jar,
		Transport:     tr,
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func randomState(t *testing.T) string {
	b := make([]byte, 32)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return base64.RawURLEncoding.EncodeToString(b)
}

// connect runs the authorization-code flow with PKCE S256 and returns the
// exchanged token.
func connect(t *testing.T, ctx context.Context, p *oauthtest.Provider, client *http.Client, cfg *oauth2.Config, user oauthtest.User) *oauth2.Token {
	t.Helper()
	verifier, state := oauth2.GenerateVerifier(), randomState(t)
	cb, err := p.Login(ctx, client, cfg.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier)), user)
	require.NoError(t, err)
	require.Equal(t, cfg.RedirectURL, cb.Scheme+"://"+cb.Host+cb.Path)
	require.Equal(t, state, cb.Query().Get("state"))
	require.Empty(t, cb.Query().Get("error"))
	code := cb.Query().Get("code")
	require.NotEmpty(t, code)
	tok, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	require.NoError(t, err)
	require.NotEmpty(t, tok.AccessToken)
	require.NotEmpty(t, tok.RefreshToken)
	return tok
}

func revoke(t *testing.T, ctx context.Context, p *oauthtest.Provider, client *http.Client, token string) {
	t.Helper()
	form := url.Values{"token": {token}, "token_type_hint": {"refresh_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.RevocationURL, strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(p.ClientID), url.QueryEscape(p.ClientSecret))
	resp, err := client.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
}

func requireOAuthError(t *testing.T, err error, code string) *oauth2.RetrieveError {
	t.Helper()
	var re *oauth2.RetrieveError
	require.ErrorAs(t, err, &re)
	require.Equal(t, code, re.ErrorCode, "%v", err)
	return re
}

func refresh(ctx context.Context, cfg *oauth2.Config, refreshToken string) (*oauth2.Token, error) {
	return cfg.TokenSource(ctx, &oauth2.Token{AccessToken: "stale", RefreshToken: refreshToken, Expiry: time.Now().Add(-time.Minute)}).Token()
}

// The whole life of a connection, without a browser: code flow with PKCE,
// exchange, refresh of an expired token (rotated), revocation, refresh
// refused.
func TestAuthorizationCodeFlow(t *testing.T) {
	t.Parallel()
	// The redirect URI is a real server that must never be reached: Login
	// stops at the redirect to it.
	var appHits atomic.Int32
	app := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { appHits.Add(1) }))
	t.Cleanup(app.Close)
	redirectURI := app.URL + "/api/data/oauth2/callback"
	p := oauthtest.StartTB(t, redirectURI)
	require.Regexp(t, `^http://localhost:\d+/$`, p.Issuer)

	ctx := t.Context()
	client := newClient(t)
	ctx = context.WithValue(ctx, oauth2.HTTPClient, client)
	cfg := p.Config(redirectURI)

	tok := connect(t, ctx, p, client, cfg, p.Users[0])
	require.NotEmpty(t, tok.Extra("id_token"))
	require.Zero(t, appHits.Load())
	require.Equal(t, 1, p.TokenRequests(oauthtest.GrantAuthorizationCode))
	require.Equal(t, 0, p.TokenRequests(oauthtest.GrantRefreshToken))

	// An expired token is refreshed; the refresh token rotates.
	ts := cfg.TokenSource(ctx, &oauth2.Token{AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken, Expiry: time.Now().Add(-time.Minute)})
	tok2, err := ts.Token()
	require.NoError(t, err)
	require.NotEqual(t, tok.AccessToken, tok2.AccessToken)
	require.NotEmpty(t, tok2.RefreshToken)
	require.NotEqual(t, tok.RefreshToken, tok2.RefreshToken)
	require.True(t, tok2.Expiry.After(time.Now()))
	require.Equal(t, 1, p.TokenRequests(oauthtest.GrantRefreshToken))

	// The old refresh token is spent.
	_, err = refresh(ctx, cfg, tok.RefreshToken)
	requireOAuthError(t, err, "invalid_grant")

	// RFC 7009 revocation, then the refresh token is refused.
	require.Equal(t, 0, p.RevokeRequests())
	revoke(t, ctx, p, client, tok2.RefreshToken)
	require.Equal(t, 1, p.RevokeRequests())
	_, err = refresh(ctx, cfg, tok2.RefreshToken)
	requireOAuthError(t, err, "invalid_grant")
	require.Equal(t, 3, p.TokenRequests(oauthtest.GrantRefreshToken))
	require.Equal(t, 4, p.TokenRequests(""))

	// Revoking an unknown or spent token is still 200 (RFC 7009 §2.2).
	revoke(t, ctx, p, client, tok2.RefreshToken)
	require.Equal(t, 2, p.RevokeRequests())
}

// The steps Login automates, by hand: /auth redirects to the login page,
// whose form is what Login fills in.
func TestLoginPage(t *testing.T) {
	t.Parallel()
	redirectURI := "http://127.0.0.1:1/callback"
	p := oauthtest.StartTB(t, redirectURI)
	ctx, client := t.Context(), newClient(t)
	cfg := p.Config(redirectURI)

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cfg.AuthCodeURL("st", oauth2.S256ChallengeOption(oauth2.GenerateVerifier())), nil)
	require.NoError(t, err)
	resp, err := client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusFound, resp.StatusCode)
	loc, err := resp.Location()
	require.NoError(t, err)
	require.Equal(t, "/login/username", loc.Path)
	authRequestID := loc.Query().Get("authRequestID")
	require.NotEmpty(t, authRequestID)

	req, err = http.NewRequestWithContext(ctx, http.MethodGet, loc.String(), nil)
	require.NoError(t, err)
	resp, err = client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	doc, err := html.Parse(resp.Body)
	require.NoError(t, err)

	type input struct{ id, name, typ, value string }
	var form map[string]string
	var inputs []input
	var buttons []string
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode {
			a := map[string]string{}
			for _, at := range n.Attr {
				a[at.Key] = at.Val
			}
			switch n.Data {
			case "form":
				form = a
			case "input":
				inputs = append(inputs, input{a["id"], a["name"], a["type"], a["value"]})
			case "button":
				buttons = append(buttons, a["type"])
			}
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	require.Equal(t, map[string]string{"method": "POST", "action": "/login/username", "style": form["style"]}, form)
	require.Equal(t, []input{
		{"", "id", "hidden", authRequestID},
		{"username", "username", "", ""},
		{"password", "password", "password", ""},
	}, inputs)
	require.Equal(t, []string{"submit"}, buttons)

	// Posting the form by hand redirects to the OP's callback, which
	// redirects to the redirect URI with code and state.
	form2 := url.Values{"id": {authRequestID}, "username": {"test-user2"}, "password": {"verysecure"}}
	req, err = http.NewRequestWithContext(ctx, http.MethodPost, p.Issuer+"login/username", strings.NewReader(form2.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp2, err := client.Do(req)
	require.NoError(t, err)
	resp2.Body.Close()
	require.Equal(t, http.StatusFound, resp2.StatusCode)
	loc, err = resp2.Location()
	require.NoError(t, err)
	require.Equal(t, "/auth/callback", loc.Path)
	req, err = http.NewRequestWithContext(ctx, http.MethodGet, loc.String(), nil)
	require.NoError(t, err)
	resp3, err := client.Do(req)
	require.NoError(t, err)
	resp3.Body.Close()
	require.Equal(t, http.StatusFound, resp3.StatusCode)
	loc, err = resp3.Location()
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(loc.String(), redirectURI+"?"), loc.String())
	require.NotEmpty(t, loc.Query().Get("code"))
	require.Equal(t, "st", loc.Query().Get("state"))
}

func TestLoginRefused(t *testing.T) {
	t.Parallel()
	redirectURI := "http://127.0.0.1:1/callback"
	p := oauthtest.StartTB(t, redirectURI)
	ctx, client := t.Context(), newClient(t)
	cfg := p.Config(redirectURI)
	authURL := cfg.AuthCodeURL("st", oauth2.S256ChallengeOption(oauth2.GenerateVerifier()))

	_, err := p.Login(ctx, client, authURL, oauthtest.User{Username: p.Users[0].Username, Password: "wrong"})
	require.ErrorContains(t, err, "refused")

	// An unregistered redirect URI: 400 at /auth, no redirect.
	other := p.Config("http://127.0.0.1:1/other")
	_, err = p.Login(ctx, client, other.AuthCodeURL("st"), p.Users[0])
	require.ErrorContains(t, err, "400")

	// Errors in a request with a valid client and redirect URI come
	// back to the redirect URI, with the state.
	noScope := *cfg
	noScope.Scopes = nil
	cb, err := p.Login(ctx, client, noScope.AuthCodeURL("st2"), p.Users[0])
	require.NoError(t, err)
	require.Equal(t, "invalid_request", cb.Query().Get("error"), cb.String())
	require.Equal(t, "st2", cb.Query().Get("state"))

	// An authURL of another server is refused.
	_, err = p.Login(ctx, client, "http://127.0.0.1:1/auth", p.Users[0])
	require.Error(t, err)
}

func TestDiscovery(t *testing.T) {
	t.Parallel()
	p := oauthtest.StartTB(t, "http://127.0.0.1:1/callback")
	client := newClient(t)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, strings.TrimSuffix(p.Issuer, "/")+"/.well-known/openid-configuration", nil)
	require.NoError(t, err)
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var doc struct {
		Issuer                string   `json:"issuer"`
		AuthorizationEndpoint string   `json:"authorization_endpoint"`
		TokenEndpoint         string   `json:"token_endpoint"`
		RevocationEndpoint    string   `json:"revocation_endpoint"`
		CodeChallengeMethods  []string `json:"code_challenge_methods_supported"`
		GrantTypes            []string `json:"grant_types_supported"`
		AuthMethods           []string `json:"token_endpoint_auth_methods_supported"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
	require.Equal(t, p.Issuer, doc.Issuer)
	require.Equal(t, p.AuthURL, doc.AuthorizationEndpoint)
	require.Equal(t, p.TokenURL, doc.TokenEndpoint)
	require.Equal(t, p.RevocationURL, doc.RevocationEndpoint)
	require.Equal(t, []string{"S256"}, doc.CodeChallengeMethods)
	require.Contains(t, doc.GrantTypes, "refresh_token")
	require.Contains(t, doc.AuthMethods, "client_secret_basic")
}

// Providers started by parallel tests are independent: each knows only its
// own client and redirect URIs.
func TestParallelProviders(t *testing.T) {
	t.Parallel()
	const n = 4
	providers := make([]*oauthtest.Provider, n)
	redirects := make([]string, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		redirects[i] = fmt.Sprintf("http://127.0.0.1:%d/callback/%d", 40000+i, i)
		wg.Go(func() {
			providers[i], errs[i] = oauthtest.Start(t.Context(), oauthtest.Options{
				RedirectURIs: []string{redirects[i]},
				ClientID:     fmt.Sprintf("client-%d", i),
				ClientSecret: fmt.Sprintf("secret-%d", i),
			})
		})
	}
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		t.Cleanup(providers[i].Close)
	}
	for i := range n {
		wg.Go(func() {
			p, client := providers[i], newClient(t)
			ctx := context.WithValue(t.Context(), oauth2.HTTPClient, client)
			tok := connect(t, ctx, p, client, p.Config(redirects[i]), p.Users[i%2])
			tok2, err := refresh(ctx, p.Config(redirects[i]), tok.RefreshToken)
			require.NoError(t, err)
			require.NotEqual(t, tok.RefreshToken, tok2.RefreshToken)

			// The next provider's redirect URI and client are unknown here.
			other := *p.Config(redirects[(i+1)%n])
			_, err = p.Login(ctx, client, other.AuthCodeURL("st"), p.Users[0])
			require.ErrorContains(t, err, "400")
			other.ClientID = providers[(i+1)%n].ClientID
			_, err = p.Login(ctx, client, other.AuthCodeURL("st"), p.Users[0])
			require.Error(t, err)
		})
	}
	wg.Wait()
}

// Two refreshes of one refresh token at once: one wins, the other gets
// invalid_grant; both reach the token endpoint.
func TestConcurrentRefresh(t *testing.T) {
	t.Parallel()
	redirectURI := "http://127.0.0.1:1/callback"
	p := oauthtest.StartTB(t, redirectURI)
	client := newClient(t)
	ctx := context.WithValue(t.Context(), oauth2.HTTPClient, client)
	cfg := p.Config(redirectURI)
	tok := connect(t, ctx, p, client, cfg, p.Users[0])

	p.SetTokenDelay(50 * time.Millisecond)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { _, errs[i] = refresh(ctx, cfg, tok.RefreshToken) })
	}
	wg.Wait()
	require.Equal(t, 2, p.TokenRequests(oauthtest.GrantRefreshToken))
	require.Equal(t, 1, btoi(errs[0] == nil)+btoi(errs[1] == nil), "%v", errs)
	for _, err := range errs {
		if err != nil {
			// The example OP answers the loser invalid_grant, or — when both
			// requests overlap inside its storage — server_error "invalid
			// refresh token". Either way the loser gets no token.
			var re *oauth2.RetrieveError
			require.ErrorAs(t, err, &re)
			require.Contains(t, []string{"invalid_grant", "server_error"}, re.ErrorCode, "%v", err)
		}
	}
}

// Revocation racing refreshes and new logins on one provider is race-free
// (the example storage reads its refresh tokens unlocked on /revoke).
func TestRevokeConcurrentWithRefresh(t *testing.T) {
	t.Parallel()
	redirectURI := "http://127.0.0.1:1/callback"
	p := oauthtest.StartTB(t, redirectURI)
	client := newClient(t)
	ctx := context.WithValue(t.Context(), oauth2.HTTPClient, client)
	cfg := p.Config(redirectURI)
	toks := make([]*oauth2.Token, 6)
	for i := range toks {
		toks[i] = connect(t, ctx, p, client, cfg, p.Users[i%2])
	}
	chain := connect(t, ctx, p, client, cfg, p.Users[0])
	var wg sync.WaitGroup
	for i, tok := range toks {
		wg.Go(func() {
			if i%2 == 0 {
				revoke(t, ctx, p, client, tok.RefreshToken)
				return
			}
			_, err := refresh(ctx, cfg, tok.RefreshToken)
			require.NoError(t, err)
		})
	}
	wg.Go(func() { connect(t, ctx, p, client, cfg, p.Users[0]) })
	// A bounded burst: revocations racing a refresh chain and logins (≈1 s
	// with -race). Without Provider's lock around /revoke, a longer burst
	// reliably shows the race in the example storage.
	for range 2 {
		wg.Go(func() {
			for range 40 {
				revoke(t, ctx, p, client, "unknown-token")
			}
		})
	}
	wg.Go(func() {
		rt := chain.RefreshToken
		for range 40 {
			tok, err := refresh(ctx, cfg, rt)
			require.NoError(t, err)
			rt = tok.RefreshToken
		}
	})
	wg.Go(func() {
		for range 10 {
			connect(t, ctx, p, client, cfg, p.Users[1])
		}
	})
	wg.Wait()
	for i, tok := range toks {
		if i%2 == 0 {
			_, err := refresh(ctx, cfg, tok.RefreshToken)
			requireOAuthError(t, err, "invalid_grant")
		}
	}
}

func TestDown(t *testing.T) {
	t.Parallel()
	redirectURI := "http://127.0.0.1:1/callback"
	p := oauthtest.StartTB(t, redirectURI)
	client := newClient(t)
	ctx := context.WithValue(t.Context(), oauth2.HTTPClient, client)
	cfg := p.Config(redirectURI)
	tok := connect(t, ctx, p, client, cfg, p.Users[0])

	p.SetDown(true)
	_, err := refresh(ctx, cfg, tok.RefreshToken)
	re := requireOAuthError(t, err, "temporarily_unavailable")
	require.Equal(t, http.StatusServiceUnavailable, re.Response.StatusCode)
	require.Equal(t, 1, p.TokenRequests(oauthtest.GrantRefreshToken))

	form := url.Values{"token": {tok.RefreshToken}, "token_type_hint": {"refresh_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.RevocationURL, strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(p.ClientID, p.ClientSecret)
	resp, err := client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, 1, p.RevokeRequests())

	// Back up: the refresh token was not consumed.
	p.SetDown(false)
	tok2, err := refresh(ctx, cfg, tok.RefreshToken)
	require.NoError(t, err)
	require.NotEqual(t, tok.RefreshToken, tok2.RefreshToken)
	require.Equal(t, 2, p.TokenRequests(oauthtest.GrantRefreshToken))
}

func TestCustomUsersAndClose(t *testing.T) {
	t.Parallel()
	redirectURI := "http://127.0.0.1:1/callback"
	p, err := oauthtest.Start(t.Context(), oauthtest.Options{
		RedirectURIs: []string{redirectURI},
		Users:        []oauthtest.User{{Subject: "alice-sub", Username: "alice", Password: "pw-a", Email: "alice@example.com"}},
	})
	require.NoError(t, err)
	require.Equal(t, oauthtest.DefaultClientID, p.ClientID)
	client := newClient(t)
	ctx := context.WithValue(t.Context(), oauth2.HTTPClient, client)
	cfg := p.Config(redirectURI)
	cfg.Scopes = append(cfg.Scopes, "email")
	tok := connect(t, ctx, p, client, cfg, p.Users[0])

	// The userinfo endpoint names the subject.
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.Issuer+"userinfo", nil)
	require.NoError(t, err)
	tok.SetAuthHeader(req)
	resp, err := client.Do(req)
	require.NoError(t, err)
	var info struct{ Sub, Email string }
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&info))
	resp.Body.Close()
	require.Equal(t, "alice-sub", info.Sub)
	require.Equal(t, "alice@example.com", info.Email)

	_, err = p.Login(ctx, client, cfg.AuthCodeURL("st"), oauthtest.User{Username: "test-user2", Password: "verysecure"})
	require.ErrorContains(t, err, "refused")

	p.Close()
	p.Close()
	_, err = refresh(ctx, cfg, tok.RefreshToken)
	require.Error(t, err)
	var re *oauth2.RetrieveError
	require.False(t, errors.As(err, &re))

	_, err = oauthtest.Start(t.Context(), oauthtest.Options{Users: []oauthtest.User{{Username: "no-subject"}}})
	require.Error(t, err)
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
