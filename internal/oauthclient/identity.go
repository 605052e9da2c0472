package oauthclient

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/oauth2"
)

// Identity is what Tether shows of a connected account: names, never a
// token.
type Identity struct {
	// Account names the account as the provider does (a username, an email
	// address); empty when the provider did not say.
	Account string
	// Scopes are the scopes the provider granted or, when its token response
	// leaves them out (RFC 6749 §5.1: then they are the requested ones), the
	// requested scopes.
	Scopes []string
}

// Bounds of what is stored of an identity.
const (
	maxAccountLen  = 200
	maxScopes      = 50
	maxScopeLen    = 200
	maxProfileBody = 64 << 10
)

// IdentityOf reads the connected account from the token response's ID
// token or else from the provider's userinfo endpoint. The ID token came
// straight from the token endpoint, over the connection Tether opened, so
// its issuer and audience are checked but not its signature (OIDC Core
// §3.1.3.7); its claims serve display only. A failure leaves Account empty:
// a missing name never blocks a connection.
func (c *Client) IdentityOf(ctx context.Context, p *Provider, e Endpoints, tok *oauth2.Token) Identity {
	id := Identity{Scopes: grantedScopes(tok, p.Scope)}
	claims := idTokenClaims(tok, p)
	id.Account = displayName(claims)
	if id.Account == "" && e.UserinfoURL != "" {
		id.Account = displayName(c.userinfo(ctx, e.UserinfoURL, tok))
	}
	if id.Account == "" {
		id.Account = clean(claims["sub"], maxAccountLen)
	}
	return id
}

// displayName picks the most readable name a profile offers: OIDC's
// preferred_username, GitHub's login, GitLab's username, then email, name.
func displayName(claims map[string]any) string {
	for _, key := range []string{"preferred_username", "login", "username", "email", "name", "nickname"} {
		if v := clean(claims[key], maxAccountLen); v != "" {
			return v
		}
	}
	return ""
}

// idTokenClaims decodes the ID token of a token response, if there is one
// for this client from this issuer.
func idTokenClaims(tok *oauth2.Token, p *Provider) map[string]any {
	raw, _ := tok.Extra("id_token").(string)
	parts := strings.Split(raw, ".")
	if len(parts) != 3 || len(raw) > maxProfileBody {
		return nil
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil
	}
	var claims map[string]any
	if json.Unmarshal(payload, &claims) != nil {
		return nil
	}
	if iss, _ := claims["iss"].(string); p.IssuerURL != "" && strings.TrimSuffix(iss, "/") != strings.TrimSuffix(p.IssuerURL, "/") {
		return nil
	}
	if !audienceHas(claims["aud"], p.ClientID) {
		return nil
	}
	return claims
}

func audienceHas(aud any, clientID string) bool {
	switch a := aud.(type) {
	case string:
		return a == clientID
	case []any:
		for _, v := range a {
			if s, _ := v.(string); s == clientID {
				return true
			}
		}
	}
	return false
}

// userinfo fetches the profile the access token belongs to. Errors are
// dropped, never logged: the request carries the token.
func (c *Client) userinfo(ctx context.Context, endpoint string, tok *oauth2.Token) map[string]any {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return nil
	}
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	req.Header.Set("Accept", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if mediaType, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); resp.StatusCode != http.StatusOK || mediaType != "application/json" {
		return nil // a signed (application/jwt) userinfo is not worth verifying for a display name
	}
	var profile map[string]any
	if json.NewDecoder(io.LimitReader(resp.Body, maxProfileBody)).Decode(&profile) != nil {
		return nil
	}
	return profile
}

// grantedScopes reads the token response's scope (space-separated per RFC
// 6749; GitHub separates with commas).
func grantedScopes(tok *oauth2.Token, requested string) []string {
	raw, _ := tok.Extra("scope").(string)
	if strings.TrimSpace(raw) == "" {
		raw = requested
	}
	var out []string
	seen := map[string]bool{}
	for _, f := range strings.FieldsFunc(raw, func(r rune) bool { return r == ' ' || r == ',' }) {
		if s := clean(f, maxScopeLen); s != "" && !seen[s] && len(out) < maxScopes {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// clean keeps a provider-supplied string fit to store and show: valid
// UTF-8, no control or bidirectional-override characters, bounded.
func clean(v any, maxLen int) string {
	s, _ := v.(string)
	if !utf8.ValidString(s) {
		return ""
	}
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || (r >= '\u202a' && r <= '\u202e') || (r >= '\u2066' && r <= '\u2069') {
			return -1
		}
		return r
	}, strings.TrimSpace(s))
	if utf8.RuneCountInString(s) > maxLen {
		s = string([]rune(s)[:maxLen])
	}
	return s
}

// gitlabUserinfo is GitLab's OIDC userinfo when the scope asks for openid,
// else its REST profile (readable with read_user or api).
func gitlabUserinfo(base, scope string) string {
	for _, s := range strings.FieldsFunc(scope, func(r rune) bool { return r == ' ' || r == ',' }) {
		if s == "openid" {
			return base + "/oauth/userinfo"
		}
	}
	return base + "/api/v4/user"
}
