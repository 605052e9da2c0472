package oauthclient_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"

	"github.com/tetherhq/tether/internal/oauthclient"
)

func TestPlainHTTPOnlyToLoopback(t *testing.T) {
	t.Parallel()
	c := oauthclient.New(2 * time.Second)
	for _, u := range []string{"http://example.org/token", "http://10.0.0.7/token", "http://169.254.169.254/latest", "ftp://127.0.0.1/x"} {
		req, err := http.NewRequest(http.MethodPost, u, strings.NewReader("refresh_token=secret"))
		require.NoError(t, err)
		_, err = c.HTTP.Do(req)
		require.ErrorIs(t, err, oauthclient.ErrInsecureURL, u)
	}
	require.True(t, oauthclient.AllowsURL("http://127.0.0.1:8080/t", false))
	require.True(t, oauthclient.AllowsURL("http://example.org/t", true), "dev mode")
	require.False(t, oauthclient.AllowsURL("http://localhost.example.org/t", false))
}

func TestRedirectsNotFollowed(t *testing.T) {
	t.Parallel()
	var reached atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Add(1) }))
	t.Cleanup(target.Close)
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL, http.StatusPermanentRedirect)
	}))
	t.Cleanup(redirector.Close)
	c := oauthclient.New(2 * time.Second)
	p := &oauthclient.Provider{ID: "p", Kind: oauthclient.KindGenericOAuth2, ClientID: "id", ClientSecret: "secret",
		AuthorizationURL: redirector.URL + "/auth", TokenURL: redirector.URL + "/token", RevocationURL: redirector.URL + "/revoke"}
	e, err := c.Endpoints(context.Background(), p)
	require.NoError(t, err)
	_, err = c.Config(p, e, "https://tether.example/cb").TokenSource(c.Context(context.Background()),
		&oauth2.Token{RefreshToken: "r", Expiry: time.Now().Add(-time.Minute)}).Token()
	require.True(t, oauthclient.IsRedirect(err), "%v", err)
	require.False(t, oauthclient.IsTemporary(err))
	require.Error(t, c.Revoke(context.Background(), p, e, "r", "refresh_token"))
	require.Zero(t, reached.Load())
}

func TestResponsesBounded(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"error":"invalid_request","error_description":"`+strings.Repeat("x", 4<<20)+`"}`)
	}))
	t.Cleanup(srv.Close)
	c := oauthclient.New(5 * time.Second)
	resp, err := c.HTTP.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	require.ErrorIs(t, err, oauthclient.ErrResponseTooLarge)
	require.LessOrEqual(t, n, int64(128<<10))

	p := &oauthclient.Provider{ID: "p", Kind: oauthclient.KindGenericOAuth2, ClientID: "id", ClientSecret: "s", TokenURL: srv.URL}
	e, _ := c.Endpoints(context.Background(), p)
	_, err = c.Config(p, e, "").TokenSource(c.Context(context.Background()), &oauth2.Token{RefreshToken: "r"}).Token()
	require.Error(t, err)
	require.NotContains(t, oauthclient.Describe(err).Error(), "xxxx", "no provider text in what is kept")
	require.False(t, oauthclient.IsTemporary(err))
}

// One config per provider, built again only when the provider changes, and
// never with an auto-detected client authentication.
func TestOneConfigPerProvider(t *testing.T) {
	t.Parallel()
	c := oauthclient.New(time.Second)
	p := &oauthclient.Provider{ID: "g", Kind: oauthclient.KindGitLab, ClientID: "id", ClientSecret: "s", URL: "https://gitlab.example"}
	for _, kind := range oauthclient.Kinds {
		if kind == oauthclient.KindGenericOIDC {
			continue // discovered; see TestDiscovery
		}
		q := *p
		q.ID, q.Kind, q.AuthorizationURL, q.TokenURL = string(kind), kind, "https://idp.example/a", "https://idp.example/t"
		e, err := c.Endpoints(context.Background(), &q)
		require.NoError(t, err)
		require.NotEqual(t, oauth2.AuthStyleAutoDetect, c.Config(&q, e, "").Endpoint.AuthStyle, kind)
	}
	e, _ := c.Endpoints(context.Background(), p)
	first := c.Config(p, e, "https://tether.example/cb")
	require.Same(t, first, c.Config(p, e, "https://tether.example/cb"))
	changed := *p
	changed.ClientSecret = "rotated"
	require.NotSame(t, first, c.Config(&changed, e, "https://tether.example/cb"))
}

func TestDiscovery(t *testing.T) {
	t.Parallel()
	doc := map[string]any{}
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(doc)
	}))
	t.Cleanup(srv.Close)
	set := func(kv map[string]any) {
		for k := range doc {
			delete(doc, k)
		}
		for k, v := range kv {
			doc[k] = v
		}
	}
	set(map[string]any{"issuer": srv.URL, "authorization_endpoint": srv.URL + "/a", "token_endpoint": srv.URL + "/t",
		"authorization_response_iss_parameter_supported": true, "token_endpoint_auth_methods_supported": []string{"client_secret_post"}})
	p := &oauthclient.Provider{ID: "o", Kind: oauthclient.KindGenericOIDC, IssuerURL: srv.URL}
	e, err := oauthclient.New(time.Second).Endpoints(context.Background(), p)
	require.NoError(t, err)
	require.Equal(t, srv.URL, e.Issuer)
	require.True(t, e.IssRequired)
	require.Equal(t, oauth2.AuthStyleInParams, e.AuthStyle)

	set(map[string]any{"issuer": srv.URL, "authorization_endpoint": srv.URL + "/a", "token_endpoint": "http://idp.example/t"})
	_, err = oauthclient.New(time.Second).Endpoints(context.Background(), p)
	require.ErrorContains(t, err, "not https", "a discovered plain-http endpoint is refused")

	set(map[string]any{"issuer": "https://other.example", "authorization_endpoint": srv.URL + "/a", "token_endpoint": srv.URL + "/t"})
	_, err = oauthclient.New(time.Second).Endpoints(context.Background(), p)
	require.True(t, errors.Is(err, oauthclient.ErrIssuerMismatch), "%v", err)
}
