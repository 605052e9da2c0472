package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/jwks"
)

// User is the authenticated caller.
type User struct {
	ID    string
	Admin bool
}

// Authenticator verifies JWTs: RS256/ES256 from an OIDC issuer's JWKS
// (production) or HS256 with a shared secret (development and tests), never
// both (LoadConfig refuses it, and so does NewAuthenticator).
type Authenticator struct {
	hmacSecret []byte
	issuer     string
	audience   string
	adminRole  string
	keys       *jwks.Keys // nil without an issuer
}

// AuthOptions tune an Authenticator beyond its configuration.
type AuthOptions struct {
	Logger *slog.Logger
	// JWKS tunes the issuer's key set (intervals, clock); tests shorten them.
	JWKS jwks.Options
}

// tokenLeeway is the clock skew allowed on exp, nbf and iat.
const tokenLeeway = 60 * time.Second

// NewAuthenticator sets up verification. With an issuer it fetches the
// issuer's discovery document and JWKS once: an answer that names another
// issuer or no key set is a configuration error; an issuer that cannot be
// reached is not (Tether starts, is not ready, answers 503 to issuer tokens
// and keeps trying: see Ready). Close ends its background fetches.
func NewAuthenticator(ctx context.Context, cfg *config.Config, opts ...AuthOptions) (*Authenticator, error) {
	var o AuthOptions
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Authenticator{hmacSecret: cfg.AuthHMACSecret, issuer: cfg.AuthIssuer, audience: cfg.AuthAudience, adminRole: cfg.AuthAdminRole}
	if cfg.AuthIssuer == "" {
		return a, nil
	}
	if cfg.AuthHMACSecret != nil {
		return nil, &config.Error{Variable: "TETHER_AUTH_HMAC_SECRET", Problem: "refused together with TETHER_AUTH_ISSUER"}
	}
	if cfg.AuthAudience == "" {
		return nil, &config.Error{Variable: "TETHER_AUTH_AUDIENCE", Problem: "required with TETHER_AUTH_ISSUER"}
	}
	if o.JWKS.Logger == nil {
		o.JWKS.Logger = o.Logger
	}
	a.keys = jwks.New(cfg.AuthIssuer, o.JWKS)
	initCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.keys.Init(initCtx); err != nil {
		var cfgErr *jwks.ConfigError
		if errors.As(err, &cfgErr) {
			a.keys.Close()
			return nil, &config.Error{Variable: "TETHER_AUTH_ISSUER", Problem: cfgErr.Problem}
		}
		o.Logger.Warn("the token issuer cannot be reached; serving, not ready, and retrying",
			"issuer", cfg.AuthIssuer, "error", err)
	}
	return a, nil
}

// Close ends background key fetches.
func (a *Authenticator) Close() {
	if a.keys != nil {
		a.keys.Close()
	}
}

// Ready reports whether tokens can be verified: always with HS256; with an
// issuer, while its key set is trusted (see jwks).
func (a *Authenticator) Ready(ctx context.Context) error {
	if a.keys == nil {
		return nil
	}
	return a.keys.Ready(ctx)
}

var (
	errBadToken = Errorf(EUNAUTHORIZED, "The bearer token is missing, malformed, expired or not signed by a trusted key.")
	errNoKeys   = Errorf(EUNAVAILABLE, "The token issuer's signing keys cannot be fetched right now; try again.")
)

// Authenticate verifies a raw JWT and returns its user.
func (a *Authenticator) Authenticate(ctx context.Context, raw string) (*User, error) {
	if raw == "" || len(raw) > 16<<10 || strings.Count(raw, ".") != 2 {
		return nil, errBadToken // compact serialization only
	}
	msg, err := jws.Parse([]byte(raw), jws.WithCompact())
	if err != nil || len(msg.Signatures()) != 1 {
		return nil, errBadToken
	}
	hdr := msg.Signatures()[0].ProtectedHeaders()
	alg, ok := hdr.Algorithm()
	if !ok || !acceptableType(hdr) {
		return nil, errBadToken
	}
	if _, crit := hdr.Critical(); crit {
		return nil, errBadToken // extensions Tether does not understand
	}
	// The algorithm is one Tether expects, and the key is picked by it:
	// "none", HS256 signed with an RSA public key, PS256 or RS512 never
	// verify.
	var tok jwt.Token
	switch {
	case a.keys != nil && (alg == jwa.RS256() || alg == jwa.ES256()):
		tok, err = a.verifyIssued(ctx, raw, hdr, alg)
	case a.keys == nil && a.hmacSecret != nil && alg == jwa.HS256():
		tok, err = jwt.Parse([]byte(raw), jwt.WithKey(jwa.HS256(), a.hmacSecret),
			jwt.WithRequiredClaim("exp"), jwt.WithAcceptableSkew(tokenLeeway))
	default:
		return nil, errBadToken
	}
	if err != nil {
		var appErr *Error
		if errors.As(err, &appErr) {
			return nil, err
		}
		return nil, errBadToken
	}
	if looksLikeIDToken(hdr, tok) {
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

func (a *Authenticator) verifyIssued(ctx context.Context, raw string, hdr jws.Headers, alg jwa.SignatureAlgorithm) (jwt.Token, error) {
	kid, _ := hdr.KeyID()
	key, err := a.keys.Key(ctx, kid, alg)
	switch {
	case errors.Is(err, jwks.ErrUnavailable):
		return nil, errNoKeys
	case err != nil:
		return nil, errBadToken
	}
	return jwt.Parse([]byte(raw), jwt.WithKey(alg, key),
		jwt.WithIssuer(a.keys.Issuer()), jwt.WithAudience(a.audience),
		jwt.WithRequiredClaim("exp"), jwt.WithAcceptableSkew(tokenLeeway))
}

// acceptableType allows the JWT types an access token comes with: none,
// "JWT", or RFC 9068's "at+jwt". Other explicit types (an ID token's
// "id_token+jwt", "logout+jwt", "secevent+jwt", "dpop+jwt" …) are tokens
// for something else (RFC 8725 §3.11).
func acceptableType(hdr jws.Headers) bool {
	typ, ok := hdr.Type()
	if !ok {
		return true
	}
	switch strings.ToLower(typ) {
	case "jwt", "at+jwt", "application/at+jwt":
		return true
	}
	return false
}

// looksLikeIDToken refuses OIDC ID tokens offered as access tokens. Issuers
// that do not type their access tokens "at+jwt" still give ID tokens away by
// claims only an ID token carries: nonce, at_hash, c_hash, or Keycloak's
// "typ": "ID".
func looksLikeIDToken(hdr jws.Headers, tok jwt.Token) bool {
	if typ, ok := hdr.Type(); ok && strings.Contains(strings.ToLower(typ), "at+jwt") {
		return false
	}
	for _, claim := range []string{"nonce", "at_hash", "c_hash"} {
		if tok.Has(claim) {
			return true
		}
	}
	var typ string
	return tok.Get("typ", &typ) == nil && strings.EqualFold(typ, "ID")
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
