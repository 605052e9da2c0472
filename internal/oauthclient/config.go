package oauthclient

import (
	"context"
	"crypto/sha256"
	"strings"

	"golang.org/x/oauth2"
)

// cachedConfig is a provider's oauth2.Config and what it was built from.
type cachedConfig struct {
	fingerprint [sha256.Size]byte
	config      *oauth2.Config
}

// Config returns the one oauth2.Config of provider p: built once, rebuilt
// only when the provider (or its endpoints) change. Its client
// authentication style is explicit, so a failed token request is sent once,
// never again with the secret moved into the body. The redirect URI is fixed
// by Tether's public URL, never taken from a request. The result is shared:
// callers must not modify it.
func (c *Client) Config(p *Provider, e Endpoints, redirectURL string) *oauth2.Config {
	fp := fingerprint(p, e, redirectURL)
	c.mu.Lock()
	defer c.mu.Unlock()
	if cached, ok := c.configs[p.ID]; ok && cached.fingerprint == fp {
		return cached.config
	}
	cfg := buildConfig(p, e, redirectURL)
	c.configs[p.ID] = cachedConfig{fingerprint: fp, config: cfg}
	return cfg
}

func buildConfig(p *Provider, e Endpoints, redirectURL string) *oauth2.Config {
	style := e.AuthStyle
	if style == oauth2.AuthStyleAutoDetect || p.ClientSecret == "" {
		// A public client (no secret) sends its id as a form parameter; an
		// unset style must never mean auto-detection.
		style = oauth2.AuthStyleInParams
		if p.ClientSecret != "" {
			style = oauth2.AuthStyleInHeader
		}
	}
	return &oauth2.Config{
		ClientID:     p.ClientID,
		ClientSecret: p.ClientSecret,
		Endpoint:     oauth2.Endpoint{AuthURL: e.AuthURL, TokenURL: e.TokenURL, AuthStyle: style},
		RedirectURL:  redirectURL,
		Scopes:       strings.FieldsFunc(p.Scope, func(r rune) bool { return r == ' ' || r == ',' }),
	}
}

func fingerprint(p *Provider, e Endpoints, redirectURL string) [sha256.Size]byte {
	h := sha256.New()
	for _, s := range []string{p.ID, string(p.Kind), p.ClientID, p.ClientSecret, p.Scope, e.AuthURL, e.TokenURL,
		string(rune('0' + int(e.AuthStyle))), redirectURL} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out
}

// Context returns ctx carrying the client's HTTP client for x/oauth2.
func (c *Client) Context(ctx context.Context) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, c.HTTP)
}
