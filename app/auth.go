package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/lestrrat-go/httprc/v3"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/oauthclient"
)

// User is the authenticated caller.
type User struct {
	ID    string
	Admin bool
}

// Authenticator verifies JWTs: HS256 with a shared secret (development and
// tests) and/or RS256/ES256 from an OIDC issuer's JWKS.
type Authenticator struct {
	hmacSecret []byte
	issuer     string
	audience   string
	adminRole  string
	keys       jwk.Set
}

// NewAuthenticator sets up verification. With an issuer it fetches the
// issuer's discovery document once and keeps its JWKS fresh in the
// background until ctx ends.
func NewAuthenticator(ctx context.Context, cfg *config.Config) (*Authenticator, error) {
	a := &Authenticator{hmacSecret: cfg.AuthHMACSecret, issuer: cfg.AuthIssuer, audience: cfg.AuthAudience, adminRole: cfg.AuthAdminRole}
	if cfg.AuthIssuer == "" {
		return a, nil
	}
	jwksURL, err := discoverJWKS(ctx, cfg.AuthIssuer)
	if err != nil {
		return nil, &config.Error{Variable: "TETHER_AUTH_ISSUER", Problem: err.Error()}
	}
	cache, err := jwk.NewCache(ctx, httprc.NewClient())
	if err != nil {
		return nil, fmt.Errorf("error creating JWKS cache: %w", err)
	}
	if err := cache.Register(ctx, jwksURL); err != nil {
		return nil, &config.Error{Variable: "TETHER_AUTH_ISSUER", Problem: fmt.Sprintf("error fetching JWKS %s: %v", jwksURL, err)}
	}
	set, err := cache.CachedSet(jwksURL)
	if err != nil {
		return nil, fmt.Errorf("error using JWKS cache: %w", err)
	}
	a.keys = set
	return a, nil
}

func discoverJWKS(ctx context.Context, issuer string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	doc, err := oauthclient.Discover(ctx, http.DefaultClient, issuer)
	if err != nil {
		return "", err
	}
	if doc.JWKSURI == "" {
		return "", errors.New("OIDC discovery names no jwks_uri")
	}
	return doc.JWKSURI, nil
}

var errBadToken = Errorf(EUNAUTHORIZED, "The bearer token is missing, malformed, expired or not signed by a trusted key.")

// Authenticate verifies a raw JWT and returns its user.
func (a *Authenticator) Authenticate(raw string) (*User, error) {
	if raw == "" || len(raw) > 16<<10 {
		return nil, errBadToken
	}
	var tok jwt.Token
	var err error
	// The algorithm is fixed by the key: "alg":"none" or an HS256 token
	// signed with an RSA public key never verifies.
	if a.keys != nil && !isHS256(raw) {
		tok, err = jwt.Parse([]byte(raw),
			jwt.WithKeySet(a.keys, jws.WithInferAlgorithmFromKey(true)),
			jwt.WithIssuer(a.issuer), jwt.WithAudience(a.audience),
			jwt.WithRequiredClaim("exp"), jwt.WithAcceptableSkew(30*time.Second))
	} else if a.hmacSecret != nil {
		tok, err = jwt.Parse([]byte(raw), jwt.WithKey(jwa.HS256(), a.hmacSecret),
			jwt.WithRequiredClaim("exp"), jwt.WithAcceptableSkew(30*time.Second))
	} else {
		return nil, errBadToken
	}
	if err != nil {
		return nil, errBadToken
	}
	sub, ok := tok.Subject()
	if !ok || ValidUserID(sub) != nil {
		// Subs Tether cannot store or project (empty, too long, invalid
		// UTF-8, control characters) are refused like a bad signature.
		return nil, errBadToken
	}
	return &User{ID: sub, Admin: a.hasRole(tok)}, nil
}

func isHS256(raw string) bool {
	msg, err := jws.Parse([]byte(raw))
	if err != nil || len(msg.Signatures()) != 1 {
		return false
	}
	alg, ok := msg.Signatures()[0].ProtectedHeaders().Algorithm()
	return ok && alg == jwa.HS256()
}

func (a *Authenticator) hasRole(tok jwt.Token) bool {
	var claims struct {
		Roles       []string `json:"roles"`
		RealmAccess struct {
			Roles []string `json:"roles"`
		} `json:"realm_access"`
	}
	for _, name := range []string{"roles", "realm_access"} {
		var v any
		if tok.Get(name, &v) != nil {
			continue
		}
		// Private claims come back as generic JSON values: round-trip them
		// into the expected shape (a wrong shape simply grants nothing).
		b, err := json.Marshal(map[string]any{name: v})
		if err == nil {
			_ = json.Unmarshal(b, &claims)
		}
	}
	return slices.Contains(claims.Roles, a.adminRole) || slices.Contains(claims.RealmAccess.Roles, a.adminRole)
}

// SignDevToken makes an HS256 token for development (tether token).
func SignDevToken(secret []byte, sub string, roles []string, ttl time.Duration) (string, error) {
	tok, err := jwt.NewBuilder().Subject(sub).IssuedAt(time.Now()).Expiration(time.Now().Add(ttl)).Build()
	if err != nil {
		return "", fmt.Errorf("error building token: %w", err)
	}
	if len(roles) > 0 {
		if err := tok.Set("roles", roles); err != nil {
			return "", fmt.Errorf("error setting roles: %w", err)
		}
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(jwa.HS256(), secret))
	if err != nil {
		return "", fmt.Errorf("error signing token: %w", err)
	}
	return string(signed), nil
}
