package app

import (
	"net/url"
	"regexp"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/oauthclient"
)

// Provider is an OAuth2 provider as the API shows it. The client secret is
// write-only.
type Provider struct {
	ID               string           `json:"id"`
	Kind             oauthclient.Kind `json:"kind"`
	DisplayName      string           `json:"display_name"`
	ClientID         string           `json:"client_id"`
	HasClientSecret  bool             `json:"has_client_secret"`
	Scope            string           `json:"scope"`
	URL              string           `json:"url"`
	UsePKCE          bool             `json:"use_pkce"`
	AuthorizationURL string           `json:"authorization_url"`
	TokenURL         string           `json:"token_url"`
	RevocationURL    string           `json:"revocation_url"`
	IssuerURL        string           `json:"issuer_url"`
	CreatedAt        time.Time        `json:"created_at"`
	UpdatedAt        time.Time        `json:"updated_at"`
}

func providerFromRow(p *dbsqlc.Oauth2Provider) *Provider {
	return &Provider{
		ID: p.ID, Kind: oauthclient.Kind(p.Kind), DisplayName: p.DisplayName, ClientID: p.ClientID,
		HasClientSecret: len(p.ClientSecretEnc) > 0, Scope: p.Scope, URL: p.Url, UsePKCE: p.UsePkce,
		AuthorizationURL: p.AuthorizationUrl, TokenURL: p.TokenUrl, RevocationURL: p.RevocationUrl,
		IssuerURL: p.IssuerUrl, CreatedAt: p.CreatedAt, UpdatedAt: p.UpdatedAt,
	}
}

// ProviderInput creates a provider (POST) or, with nil fields left as they
// are, updates one (PATCH).
type ProviderInput struct {
	ID               *string `json:"id"`
	Kind             *string `json:"kind"`
	DisplayName      *string `json:"display_name"`
	ClientID         *string `json:"client_id"`
	ClientSecret     *string `json:"client_secret"`
	Scope            *string `json:"scope"`
	URL              *string `json:"url"`
	UsePKCE          *bool   `json:"use_pkce"`
	AuthorizationURL *string `json:"authorization_url"`
	TokenURL         *string `json:"token_url"`
	RevocationURL    *string `json:"revocation_url"`
	IssuerURL        *string `json:"issuer_url"`
}

var slugPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidProviderID reports whether id can name a provider.
func ValidProviderID(id string) bool { return slugPattern.MatchString(id) }

func checkText(field, v string, minLen, maxLen int) error {
	if !utf8.ValidString(v) {
		return Errorf(EINVALID, "%s must be valid UTF-8", field)
	}
	n := utf8.RuneCountInString(v)
	if n < minLen || n > maxLen {
		if minLen > 0 {
			return Errorf(EINVALID, "%s must be %d to %d characters long", field, minLen, maxLen)
		}
		return Errorf(EINVALID, "%s must be at most %d characters long", field, maxLen)
	}
	for _, r := range v {
		if unicode.IsControl(r) || r == '\u2028' || r == '\u2029' || (r >= '\u202a' && r <= '\u202e') || (r >= '\u2066' && r <= '\u2069') {
			return Errorf(EINVALID, "%s must not contain control or bidirectional-override characters", field)
		}
	}
	return nil
}

func checkURL(field, v string) error {
	if v == "" {
		return nil
	}
	if len(v) > 2000 {
		return Errorf(EINVALID, "%s must be at most 2000 characters long", field)
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.Fragment != "" {
		return Errorf(EINVALID, "%s must be an absolute http(s) URL without credentials or fragment", field)
	}
	return nil
}
