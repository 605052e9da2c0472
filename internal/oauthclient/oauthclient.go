// Package oauthclient turns a stored OAuth2 provider into a working client:
// its endpoints per kind (GitLab, GitHub, explicit, OIDC discovery), one
// oauth2.Config per provider with Tether's fixed redirect URI and an
// explicit client authentication style, RFC 7009 revocation, and the one
// HTTP client all of it goes through: https only (plain http to loopback
// hosts, or anywhere in dev mode), redirects never followed, answers read up
// to a bound.
package oauthclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/tetherhq/tether/internal/loopback"
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

// Endpoints are a provider's OAuth2 endpoints and what its metadata says.
type Endpoints struct {
	AuthURL       string
	TokenURL      string
	RevocationURL string // empty: the provider has none Tether can call
	// UserinfoURL names the connected account (see IdentityOf); empty: none.
	UserinfoURL string
	// Issuer is the authorization server's issuer identifier as its
	// discovery document spells it ("" when unknown): an authorization
	// response's iss must equal it (RFC 9207).
	Issuer string
	// IssRequired: the metadata sets
	// authorization_response_iss_parameter_supported, so a response
	// without iss did not come from this provider.
	IssRequired bool
	// AuthStyle is how the client authenticates at the token endpoint:
	// never auto-detected (x/oauth2 would retry every failed request with
	// the secret in the body).
	AuthStyle oauth2.AuthStyle
}

// Client resolves endpoints and talks to providers. Safe for concurrent use.
type Client struct {
	HTTP *http.Client

	mu        sync.Mutex
	discovery map[string]discovered
	configs   map[string]cachedConfig // by provider id
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

// Options tune New.
type Options struct {
	// Timeout bounds each request.
	Timeout time.Duration
	// AllowHTTP allows plain http to any host (dev mode); otherwise only to
	// loopback hosts.
	AllowHTTP bool
}

// New returns a client whose provider calls time out after timeout.
func New(timeout time.Duration) *Client {
	return NewWithOptions(Options{Timeout: timeout})
}

// NewWithOptions returns a client with opts.
func NewWithOptions(opts Options) *Client {
	return &Client{
		HTTP: &http.Client{
			Timeout:   opts.Timeout,
			Transport: &guardedTransport{base: http.DefaultTransport, allowHTTP: opts.AllowHTTP},
			// A token, revocation or discovery endpoint that redirects
			// would have the secret and tokens re-posted elsewhere (307,
			// 308): its redirect is an answer, never followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		discovery: map[string]discovered{},
		configs:   map[string]cachedConfig{},
	}
}

// AllowsURL reports whether Tether may call rawURL: https, or http to a
// loopback host, or http anywhere when allowHTTP (dev mode).
func AllowsURL(rawURL string, allowHTTP bool) bool {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return false
	}
	return u.Scheme == "https" || (u.Scheme == "http" && (allowHTTP || loopback.Host(u.Hostname())))
}

// Endpoints returns a provider's endpoints.
func (c *Client) Endpoints(ctx context.Context, p *Provider) (Endpoints, error) {
	switch p.Kind {
	case KindGitLab:
		base := strings.TrimSuffix(p.URL, "/")
		// GitLab documents client_id and client_secret as form parameters.
		return Endpoints{AuthURL: base + "/oauth/authorize", TokenURL: base + "/oauth/token", RevocationURL: base + "/oauth/revoke",
			UserinfoURL: gitlabUserinfo(base, p.Scope), AuthStyle: oauth2.AuthStyleInParams}, nil
	case KindGitHub:
		// GitHub has no RFC 7009 endpoint (its grant deletion is a REST API
		// call with other credentials), and documents form parameters.
		return Endpoints{AuthURL: "https://github.com/login/oauth/authorize", TokenURL: "https://github.com/login/oauth/access_token",
			UserinfoURL: "https://api.github.com/user", AuthStyle: oauth2.AuthStyleInParams}, nil
	case KindGenericOAuth2:
		// HTTP Basic is the one method RFC 6749 §2.3.1 makes every server
		// support.
		return Endpoints{AuthURL: p.AuthorizationURL, TokenURL: p.TokenURL, RevocationURL: p.RevocationURL,
			AuthStyle: oauth2.AuthStyleInHeader}, nil
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
	allowHTTP := c.allowHTTP()
	for _, u := range []string{doc.AuthorizationEndpoint, doc.TokenEndpoint, doc.RevocationEndpoint, doc.UserinfoEndpoint} {
		if u != "" && !AllowsURL(u, allowHTTP) {
			return Endpoints{}, fmt.Errorf("OIDC discovery names endpoint %q, which is not https", u)
		}
	}
	e := Endpoints{AuthURL: doc.AuthorizationEndpoint, TokenURL: doc.TokenEndpoint, RevocationURL: doc.RevocationEndpoint,
		UserinfoURL: doc.UserinfoEndpoint, Issuer: doc.Issuer, IssRequired: doc.IssParameterSupported, AuthStyle: oidcAuthStyle(doc.TokenAuthMethods)}
	c.mu.Lock()
	c.discovery[issuer] = discovered{endpoints: e, at: time.Now()}
	c.mu.Unlock()
	return e, nil
}

// Metadata is the part of an OIDC discovery document Tether reads.
type Metadata struct {
	Issuer                string   `json:"issuer"`
	AuthorizationEndpoint string   `json:"authorization_endpoint"`
	TokenEndpoint         string   `json:"token_endpoint"`
	RevocationEndpoint    string   `json:"revocation_endpoint"`
	UserinfoEndpoint      string   `json:"userinfo_endpoint"`
	JWKSURI               string   `json:"jwks_uri"`
	TokenAuthMethods      []string `json:"token_endpoint_auth_methods_supported"`
	// IssParameterSupported: the server puts iss in its authorization
	// responses (RFC 9207).
	IssParameterSupported bool `json:"authorization_response_iss_parameter_supported"`
}

// ErrIssuerMismatch: a discovery document names another issuer than the one
// it was fetched for.
var ErrIssuerMismatch = errors.New("the OIDC discovery document names another issuer")

// Discover fetches issuer's discovery document: the one discovery client,
// for providers and for the issuer of Tether's own tokens. A document that
// names another issuer is refused (a mix-up waiting to happen). Only a 200
// answer counts: client should not follow redirects.
func Discover(ctx context.Context, client *http.Client, issuer string) (*Metadata, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(issuer, "/")+"/.well-known/openid-configuration", nil)
	if err != nil {
		return nil, fmt.Errorf("error building discovery request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("error fetching OIDC discovery: %s", redactError(err))
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
		return nil, fmt.Errorf("%w: %s names issuer %q", ErrIssuerMismatch, issuer, doc.Issuer)
	}
	return &doc, nil
}

// oidcAuthStyle picks the client authentication the provider supports:
// client_secret_basic (the default when the metadata says nothing), else
// client_secret_post.
func oidcAuthStyle(methods []string) oauth2.AuthStyle {
	if len(methods) > 0 && !slices.Contains(methods, "client_secret_basic") && slices.Contains(methods, "client_secret_post") {
		return oauth2.AuthStyleInParams
	}
	return oauth2.AuthStyleInHeader
}

func (c *Client) allowHTTP() bool {
	if t, ok := c.HTTP.Transport.(*guardedTransport); ok {
		return t.allowHTTP
	}
	return false
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
