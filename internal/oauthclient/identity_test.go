package oauthclient

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
)

func idToken(t *testing.T, claims map[string]any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	require.NoError(t, err)
	return "eyJhbGciOiJSUzI1NiJ9." + base64.RawURLEncoding.EncodeToString(payload) + ".c2ln"
}

func token(extra map[string]any) *oauth2.Token {
	return (&oauth2.Token{AccessToken: "access-token-never-stored", Expiry: time.Now().Add(time.Hour)}).WithExtra(extra)
}

// The account comes from the ID token when it is this client's, from this
// issuer, and names someone; from userinfo otherwise; the scopes from the
// token response, else as requested. Provider text is cleaned and bounded.
func TestIdentityOf(t *testing.T) {
	t.Parallel()
	var userinfoCalls int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		userinfoCalls++
		require.Equal(t, "Bearer access-token-never-stored", r.Header.Get("Authorization"))
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		_, _ = w.Write([]byte(`{"sub": "42", "login": "octo\u202ecat\n"}`))
	}))
	defer srv.Close()
	c := New(5 * time.Second)
	p := &Provider{ClientID: "tether", IssuerURL: "https://idp.example/", Scope: "openid profile"}
	e := Endpoints{UserinfoURL: srv.URL}
	ctx := context.Background()

	id := c.IdentityOf(ctx, p, e, token(map[string]any{"scope": "openid,profile read",
		"id_token": idToken(t, map[string]any{"iss": "https://idp.example", "aud": []any{"other", "tether"}, "sub": "42", "email": "ada@example.org"})}))
	require.Equal(t, "ada@example.org", id.Account)
	require.Equal(t, []string{"openid", "profile", "read"}, id.Scopes)
	require.Zero(t, userinfoCalls, "the ID token named the account")

	id = c.IdentityOf(ctx, p, e, token(map[string]any{
		"id_token": idToken(t, map[string]any{"iss": "https://idp.example", "aud": "tether", "sub": "42"})}))
	require.Equal(t, "octocat", id.Account, "from userinfo, cleaned")
	require.Equal(t, []string{"openid", "profile"}, id.Scopes, "the requested scopes when the response has none")

	for name, claims := range map[string]map[string]any{
		"another client": {"iss": "https://idp.example", "aud": "mallory", "preferred_username": "evil"},
		"another issuer": {"iss": "https://evil.example", "aud": "tether", "preferred_username": "evil"},
	} {
		id = c.IdentityOf(ctx, p, Endpoints{}, token(map[string]any{"id_token": idToken(t, claims)}))
		require.Empty(t, id.Account, name)
	}
	id = c.IdentityOf(ctx, p, Endpoints{}, token(map[string]any{"id_token": "not.a.jwt!"}))
	require.Empty(t, id.Account)
	require.Empty(t, clean("\x00\x07\u2066", maxAccountLen), "control and bidi characters go")
	require.Len(t, []rune(clean(strings.Repeat("é", 300), maxAccountLen)), maxAccountLen)
}
