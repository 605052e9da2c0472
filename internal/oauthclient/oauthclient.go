// Package oauthclient turns a stored OAuth2 provider into a working client:
// its endpoints per kind (GitLab, GitHub, explicit, OIDC discovery), an
// oauth2.Config with Tether's fixed redirect URI, and RFC 7009 revocation.
package oauthclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
)

// Provider is what a client needs to know of a stored provider.
type Provider struct {
	ID               string
	Kind             Kind
	ClientID         string
	ClientSecret     string
	Scope            string
	URL              string
	AuthorizationURL string
	TokenURL         string
	RevocationURL    string
	IssuerURL        string
	UsePKCE          bool
}

// Endpoints are a provider's OAuth2 endpoints.
type Endpoints struct {
	AuthURL       string
	TokenURL      string
	RevocationURL string // empty: the provider has none Tether can call
	// UserinfoURL names the connected account (see IdentityOf); empty: none.
	UserinfoURL string
}

// Client resolves endpoints and talks to providers. Safe for concurrent use.
type Client struct {
	HTTP *http.Client

	mu        sync.Mutex
	discovery map[string]discovered
}

type discovered struct {
	endpoints Endpoints
	at        time.Time
}

// Kind is a provider's kind: it decides how its endpoints are found.
type Kind string

const (
	KindGitLab        Kind = "gitlab"
	KindGitHub        Kind = "github"
	KindGenericOAuth2 Kind = "generic_oauth2"
	KindGenericOIDC   Kind = "generic_oidc"
)

// Kinds are every kind Tether knows.
var Kinds = []Kind{KindGitLab, KindGitHub, KindGenericOAuth2, KindGenericOIDC}

// discoveryTTL bounds how long an OIDC discovery document is trusted.
const discoveryTTL = 10 * time.Minute

// New returns a client whose provider calls time out after timeout.
func New(timeout time.Duration) *Client {
	return &Client{HTTP: &http.Client{Timeout: timeout}, discovery: map[string]discovered{}}
}

// Endpoints returns a provider's endpoints.
func (c *Client) Endpoints(ctx context.Context, p *Provider) (Endpoints, error) {
	switch p.Kind {
	case KindGitLab:
		base := strings.TrimSuffix(p.URL, "/")
		return Endpoints{AuthURL: base + "/oauth/authorize", TokenURL: base + "/oauth/token", RevocationURL: base + "/oauth/revoke",
			UserinfoURL: gitlabUserinfo(base, p.Scope)}, nil
	case KindGitHub:
		// GitHub has no RFC 7009 endpoint (its grant deletion is a REST API
		// call with other credentials).
		return Endpoints{AuthURL: "https://github.com/login/oauth/authorize", TokenURL: "https://github.com/login/oauth/access_token",
			UserinfoURL: "https://api.github.com/user"}, nil
	case KindGenericOAuth2:
		return Endpoints{AuthURL: p.AuthorizationURL, TokenURL: p.TokenURL, RevocationURL: p.RevocationURL}, nil
	case KindGenericOIDC:
		return c.discover(ctx, p.IssuerURL)
	}
	return Endpoints{}, fmt.Errorf("unknown provider kind %q", p.Kind)
}

func (c *Client) discover(ctx context.Context, issuer string) (Endpoints, error) {
	c.mu.Lock()
	d, ok := c.discovery[issuer]
	c.mu.Unlock()
	if ok && time.Since(d.at) < discoveryTTL {
		return d.endpoints, nil
	}
	doc, err := Discover(ctx, c.HTTP, issuer)
	if err != nil {
		return Endpoints{}, err
	}
	if doc.AuthorizationEndpoint == "" || doc.TokenEndpoint == "" {
		return Endpoints{}, errors.New("OIDC discovery lacks authorization or token endpoint")
	}
	e := Endpoints{AuthURL: doc.AuthorizationEndpoint, TokenURL: doc.TokenEndpoint, RevocationURL: doc.RevocationEndpoint,
		UserinfoURL: doc.UserinfoEndpoint}
	c.mu.Lock()
	c.discovery[issuer] = discovered{endpoints: e, at: time.Now()}
	c.mu.Unlock()
	return e, nil
}

// Metadata is the part of an OIDC discovery document Tether reads.
type Metadata struct {
	Issuer                string `json:"issuer"`
	AuthorizationEndpoint string `json:"authorization_endpoint"`
	TokenEndpoint         string `json:"token_endpoint"`
	RevocationEndpoint    string `json:"revocation_endpoint"`
	UserinfoEndpoint      string `json:"userinfo_endpoint"`
	JWKSURI               string `json:"jwks_uri"`
}

// Discover fetches issuer's discovery document: the one discovery client,
// for providers and for the issuer of Tether's own tokens. A document that
// names another issuer is refused (a mix-up waiting to happen).
func Discover(ctx context.Context, client *http.Client, issuer string) (*Metadata, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(issuer, "/")+"/.well-known/openid-configuration", nil)
	if err != nil {
		return nil, fmt.Errorf("error building discovery request: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("error fetching OIDC discovery: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("OIDC discovery answered %s", resp.Status)
	}
	var doc Metadata
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&doc); err != nil {
		return nil, fmt.Errorf("error decoding OIDC discovery: %w", err)
	}
	if strings.TrimSuffix(doc.Issuer, "/") != strings.TrimSuffix(issuer, "/") {
		return nil, fmt.Errorf("OIDC discovery of %s names issuer %q", issuer, doc.Issuer)
	}
	return &doc, nil
}

// Config builds the oauth2.Config of a provider. The redirect URI is fixed by
// Tether's public URL, never taken from a request.
func Config(p *Provider, e Endpoints, redirectURL string) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     p.ClientID,
		ClientSecret: p.ClientSecret,
		Endpoint:     oauth2.Endpoint{AuthURL: e.AuthURL, TokenURL: e.TokenURL},
		RedirectURL:  redirectURL,
		Scopes:       strings.FieldsFunc(p.Scope, func(r rune) bool { return r == ' ' || r == ',' }),
	}
}

// Context returns ctx carrying the client's HTTP client for x/oauth2.
func (c *Client) Context(ctx context.Context) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, c.HTTP)
}

// ErrTemporary marks a provider failure worth retrying (network, 5xx, 429).
var ErrTemporary = errors.New("provider temporarily unavailable")

// Revoke revokes a token at an RFC 7009 endpoint with client authentication.
// RFC 7009 answers 200 for tokens that are already invalid.
func (c *Client) Revoke(ctx context.Context, cfg *oauth2.Config, endpoint, token, hint string) error {
	form := url.Values{"token": {token}, "token_type_hint": {hint}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return fmt.Errorf("error building revocation request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(cfg.ClientID), url.QueryEscape(cfg.ClientSecret))
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("%w: revocation request failed: %s", ErrTemporary, redactError(err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode == http.StatusOK:
		return nil
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return fmt.Errorf("%w: revocation endpoint answered %s", ErrTemporary, resp.Status)
	}
	return fmt.Errorf("revocation endpoint answered %s", resp.Status)
}

// redactError keeps URLs (which could carry a query) out of error text: only
// the error kind stays.
func redactError(err error) string {
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		return urlErr.Op + ": " + urlErr.Err.Error()
	}
	return err.Error()
}

// IsInvalidGrant reports whether a token-endpoint error says the grant is
// gone (revoked, expired, rotated away): the user must reconnect.
func IsInvalidGrant(err error) bool {
	var re *oauth2.RetrieveError
	return errors.As(err, &re) && (re.ErrorCode == "invalid_grant" ||
		(re.ErrorCode == "" && re.Response != nil && re.Response.StatusCode == http.StatusBadRequest && strings.Contains(string(re.Body), "invalid_grant")))
}

// IsTemporary reports whether a token-endpoint error is worth retrying.
func IsTemporary(err error) bool {
	if errors.Is(err, ErrTemporary) {
		return true
	}
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return re.Response != nil && (re.Response.StatusCode >= 500 || re.Response.StatusCode == http.StatusTooManyRequests)
	}
	return true // network errors
}
