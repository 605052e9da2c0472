package app

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/oauth2"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/internal/oauthclient"
)

// StateTTL is how long an authorization may take.
const StateTTL = 10 * time.Minute

// CallbackPath is the one redirect URI path; the full URI is the public URL
// plus this, never derived from a request.
const CallbackPath = "/api/data/oauth2/callback"

// OAuthConfig is what the OAuth2 flow needs besides the database.
type OAuthConfig struct {
	Client         *oauthclient.Client
	PublicURL      *url.URL
	AllowedOrigins []string
	// StateTTL bounds how long an authorization may take; 0 means StateTTL.
	StateTTL time.Duration
}

func (s *Service) redirectURL() string {
	return strings.TrimSuffix(s.OAuth.PublicURL.String(), "/") + CallbackPath
}

// ValidateNextURL accepts a relative path (a single leading '/') or an
// absolute http(s) URL whose origin is allowed; anything else (//host,
// /\host, javascript:, other origins, credentials, control characters) is
// refused. It returns the URL to store.
func ValidateNextURL(raw string, allowedOrigins []string) (string, error) {
	bad := Errorf(EINVALID, "next_url must be a relative path starting with a single / or an URL of an allowed origin")
	if raw == "" {
		return "", nil
	}
	if len(raw) > 2000 {
		return "", bad
	}
	for _, r := range raw {
		if unicode.IsControl(r) || unicode.IsSpace(r) || r == '\\' {
			return "", bad
		}
	}
	u, err := url.Parse(raw)
	if err != nil || u.User != nil || u.Opaque != "" {
		return "", bad
	}
	// The string is stored and used exactly as given: re-serializing a parsed
	// URL can turn "/%2F…" into "//…", a link to another host.
	if strings.HasPrefix(raw, "/") {
		if strings.HasPrefix(raw, "//") || u.Scheme != "" || u.Host != "" {
			return "", bad
		}
		return raw, nil
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", bad
	}
	origin := u.Scheme + "://" + strings.ToLower(u.Host)
	for _, allowed := range allowedOrigins {
		if subtle.ConstantTimeCompare([]byte(origin), []byte(allowed)) == 1 {
			return raw, nil
		}
	}
	return "", bad
}

// WithError adds error=code to a validated next URL, by appending to the
// string (never by re-serializing it: see ValidateNextURL).
func WithError(next, code string) string {
	base, fragment, hasFragment := strings.Cut(next, "#")
	sep := "?"
	if strings.Contains(base, "?") {
		sep = "&"
	}
	out := base + sep + "error=" + url.QueryEscape(code)
	if hasFragment {
		out += "#" + fragment
	}
	return out
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func hashToken(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// Tokens Tether makes (state, browser binding) are 32 random bytes,
// base64url without padding: 43 characters of that alphabet.
var tokenPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

// ParseState checks the shape of a state from a callback and returns the hash
// it is stored under. Anything Tether cannot have issued is refused before
// the database is asked.
func ParseState(raw string) ([]byte, error) {
	if !tokenPattern.MatchString(raw) {
		return nil, errInvalidState
	}
	return hashToken(raw), nil
}

var errInvalidState = Errorf(EINVALID, "The authorization state is invalid, expired, used already, or belongs to another user or browser. Start again.")

// oauthProvider loads a provider, decrypts its client secret and resolves
// its endpoints.
func (s *Service) oauthProvider(ctx context.Context, db dbsqlc.DBTX, id string) (*oauthclient.Provider, oauthclient.Endpoints, error) {
	row, err := queries.ProviderGetByID(ctx, db, id)
	if err != nil {
		return nil, oauthclient.Endpoints{}, notFound(err, "provider")
	}
	p := &oauthclient.Provider{ID: row.ID, Kind: oauthclient.Kind(row.Kind), ClientID: row.ClientID, Scope: row.Scope, URL: row.Url,
		AuthorizationURL: row.AuthorizationUrl, TokenURL: row.TokenUrl, RevocationURL: row.RevocationUrl,
		IssuerURL: row.IssuerUrl, UsePKCE: row.UsePkce}
	if len(row.ClientSecretEnc) > 0 {
		secret, _, err := s.Keys.Decrypt(row.ClientSecretEnc, keyring.ClientSecretAAD(row.ID))
		if err != nil {
			return nil, oauthclient.Endpoints{}, fmt.Errorf("error decrypting client secret of provider %s: %w", row.ID, err)
		}
		p.ClientSecret = string(secret)
	}
	e, err := s.OAuth.Client.Endpoints(ctx, p)
	if err != nil {
		return nil, oauthclient.Endpoints{}, &wrappedError{app: Errorf(EUNAVAILABLE, "The provider's configuration could not be loaded; try again."), cause: err}
	}
	return p, e, nil
}

// Authorization is the start of a flow: where to send the browser, and the
// browser-binding cookie value to set.
type Authorization struct {
	RedirectURL    string
	BrowserBinding string
}

// Authorize starts connecting the user to a provider. browserBinding is the
// caller's existing binding cookie, if any.
func (s *Service) Authorize(ctx context.Context, user *User, providerID, nextURL, browserBinding string) (*Authorization, error) {
	next, err := ValidateNextURL(nextURL, s.OAuth.AllowedOrigins)
	if err != nil {
		return nil, err
	}
	provider, endpoints, err := s.oauthProvider(ctx, s.DB, providerID)
	if err != nil {
		return nil, err
	}
	if !tokenPattern.MatchString(browserBinding) {
		browserBinding = randomToken()
	}
	state := randomToken()
	cfg := oauthclient.Config(provider, endpoints, s.redirectURL())
	var opts []oauth2.AuthCodeOption
	var verifierEnc []byte
	if provider.UsePKCE {
		verifier := oauth2.GenerateVerifier()
		opts = append(opts, oauth2.S256ChallengeOption(verifier))
		if verifierEnc, err = s.Keys.Encrypt([]byte(verifier), keyring.StateAAD(hashToken(state))); err != nil {
			return nil, err
		}
	}
	expiresAt := time.Now().Add(s.OAuth.stateTTL())
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := queries.StateDeleteExpired(ctx, tx); err != nil {
			return fmt.Errorf("error pruning expired states: %w", err)
		}
		if err := queries.StateInsert(ctx, tx, &dbsqlc.StateInsertParams{
			StateHash: hashToken(state), UserID: user.ID, ProviderID: providerID, BrowserHash: hashToken(browserBinding),
			CodeVerifierEnc: verifierEnc, NextUrl: next, ExpiresAt: expiresAt,
		}); err != nil {
			if isForeignKeyViolation(err) {
				return Errorf(ENOTFOUND, "No such provider.")
			}
			return fmt.Errorf("error storing state: %w", err)
		}
		// A new connection starts pending; an existing one keeps its status
		// (and its access) until this authorization completes.
		if _, err := queries.ConnectionInsertPending(ctx, tx, &dbsqlc.ConnectionInsertPendingParams{
			UserID: user.ID, ProviderID: providerID, AuthorizingUntil: &expiresAt,
		}); err != nil {
			return fmt.Errorf("error recording pending connection: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &Authorization{RedirectURL: cfg.AuthCodeURL(state, opts...), BrowserBinding: browserBinding}, nil
}

// CallbackResult says where the browser goes after the callback.
type CallbackResult struct {
	NextURL string // empty: answer {"status":"OK"}
}

// storedToken is the encrypted form of a connection's tokens.
type storedToken struct {
	AccessToken  string    `json:"access_token"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	TokenType    string    `json:"token_type,omitempty"`
	Expiry       time.Time `json:"expiry,omitzero"`
}

var providerErrorPattern = regexp.MustCompile(`^[a-z_]{1,64}$`)

// Callback completes a flow. The state is consumed first, so it can never be
// used twice, even when the rest fails. An authorization that ends without
// connecting ends its pending connection too.
func (s *Service) Callback(ctx context.Context, user *User, browserBinding, state, code, providerError string) (*CallbackResult, error) {
	st, err := s.consumeState(ctx, user, browserBinding, state)
	if err != nil {
		return nil, err
	}
	fail := func(errCode string, appErr *Error) (*CallbackResult, error) {
		if err := s.endAuthorization(ctx, user.ID, st.ProviderID); err != nil {
			return nil, err
		}
		if st.NextUrl != "" {
			return &CallbackResult{NextURL: WithError(st.NextUrl, errCode)}, nil
		}
		return nil, appErr
	}
	switch {
	case time.Now().After(st.ExpiresAt):
		return fail("authorization_expired", errStateExpired)
	case providerError != "":
		// error_description is the provider's free text: dropped, not echoed.
		errCode := providerError
		if !providerErrorPattern.MatchString(errCode) {
			errCode = "provider_error"
		}
		return fail(errCode, Errorf(EINVALID, "The provider refused the authorization (%s).", errCode))
	case code == "" || len(code) > 4096:
		return fail("invalid_request", Errorf(EINVALID, "The callback carries no authorization code."))
	}
	provider, endpoints, err := s.oauthProvider(ctx, s.DB, st.ProviderID)
	if err != nil {
		return nil, err
	}
	tok, err := s.exchange(ctx, st, provider, endpoints, code)
	if appErr := (*Error)(nil); errors.As(err, &appErr) {
		return fail("exchange_failed", appErr)
	} else if err != nil {
		return nil, err
	}
	identity := s.OAuth.Client.IdentityOf(ctx, provider, endpoints, tok)
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		row, err := queries.ConnectionUpsertStatus(ctx, tx, &dbsqlc.ConnectionUpsertStatusParams{UserID: user.ID, ProviderID: st.ProviderID, Status: string(StatusConnected)})
		if err != nil {
			if isForeignKeyViolation(err) {
				return Errorf(ENOTFOUND, "The provider was deleted meanwhile.")
			}
			return fmt.Errorf("error writing connection: %w", err)
		}
		if err := s.storeToken(ctx, tx, row.ID, tok); err != nil {
			return err
		}
		if err := storeIdentity(ctx, tx, row, identity); err != nil {
			return err
		}
		return s.Enqueuer.Connection(ctx, tx, st.ProviderID, user.ID, false)
	})
	if err != nil {
		return nil, err
	}
	return &CallbackResult{NextURL: st.NextUrl}, nil
}

// consumeState takes the callback's state out of the database (single use)
// and checks that it belongs to this user and browser.
func (s *Service) consumeState(ctx context.Context, user *User, browserBinding, state string) (*dbsqlc.Oauth2State, error) {
	stateHash, err := ParseState(state)
	if err != nil {
		return nil, err
	}
	var st *dbsqlc.Oauth2State
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		st, err = queries.StateConsume(ctx, tx, stateHash)
		if errors.Is(err, pgx.ErrNoRows) {
			return errInvalidState
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare([]byte(st.UserID), []byte(user.ID)) != 1 ||
		subtle.ConstantTimeCompare(st.BrowserHash, hashToken(browserBinding)) != 1 {
		return nil, errInvalidState
	}
	return st, nil
}

// errExchangeFailed is the provider refusing the code (or unreachable).
var errExchangeFailed = Errorf(EINVALID, "The provider did not accept the authorization code.")

// exchange trades the authorization code for tokens, with the state's PKCE
// verifier. A refusal is errExchangeFailed (with its cause); anything else
// is Tether's own failure.
func (s *Service) exchange(ctx context.Context, st *dbsqlc.Oauth2State, provider *oauthclient.Provider, endpoints oauthclient.Endpoints, code string) (*oauth2.Token, error) {
	cfg := oauthclient.Config(provider, endpoints, s.redirectURL())
	var opts []oauth2.AuthCodeOption
	if len(st.CodeVerifierEnc) > 0 {
		verifier, _, err := s.Keys.Decrypt(st.CodeVerifierEnc, keyring.StateAAD(st.StateHash))
		if err != nil {
			return nil, fmt.Errorf("error decrypting code verifier: %w", err)
		}
		opts = append(opts, oauth2.VerifierOption(string(verifier)))
	}
	tok, err := cfg.Exchange(s.OAuth.Client.Context(ctx), code, opts...)
	if err != nil {
		return nil, &wrappedError{app: errExchangeFailed, cause: err}
	}
	return tok, nil
}

func (s *Service) storeToken(ctx context.Context, tx pgx.Tx, connectionID uuid.UUID, tok *oauth2.Token) error {
	plain, err := json.Marshal(storedToken{AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken, TokenType: tok.TokenType, Expiry: tok.Expiry})
	if err != nil {
		return fmt.Errorf("error encoding token: %w", err)
	}
	enc, err := s.Keys.Encrypt(plain, keyring.TokenAAD(connectionID.String()))
	if err != nil {
		return err
	}
	var expires *time.Time
	if !tok.Expiry.IsZero() {
		expires = &tok.Expiry
	}
	if err := queries.ConnectionSetToken(ctx, tx, &dbsqlc.ConnectionSetTokenParams{ID: connectionID, TokenEnc: enc, TokenExpiresAt: expires}); err != nil {
		return fmt.Errorf("error storing token: %w", err)
	}
	return nil
}

func (s *Service) loadToken(connectionID uuid.UUID, enc []byte) (*storedToken, bool, error) {
	plain, stale, err := s.Keys.Decrypt(enc, keyring.TokenAAD(connectionID.String()))
	if err != nil {
		return nil, false, fmt.Errorf("error decrypting token: %w", err)
	}
	var st storedToken
	if err := json.Unmarshal(plain, &st); err != nil {
		return nil, false, fmt.Errorf("error decoding token: %w", err)
	}
	return &st, stale, nil
}

// AccessToken is what the token endpoint returns.
type AccessToken struct {
	AccessToken string     `json:"access_token"`
	ExpiresAt   *time.Time `json:"expires_at"`
}

// refreshMargin refreshes tokens that would expire this soon.
const refreshMargin = 30 * time.Second

// ConnectionToken returns a valid access token of the user's connection,
// refreshing it when it has expired. The row is locked for the refresh, so
// two instances refreshing the same connection make one provider call: the
// second waits, then finds the fresh token. A refresh the provider refuses
// with invalid_grant marks the connection error, which revokes its access.
func (s *Service) ConnectionToken(ctx context.Context, user *User, id uuid.UUID) (*AccessToken, error) {
	var out *AccessToken
	var refused bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		row, err := queries.ConnectionGetForUpdate(ctx, tx, &dbsqlc.ConnectionGetForUpdateParams{ID: id, UserID: user.ID})
		if err != nil {
			return notFound(err, "connection")
		}
		if ConnectionStatus(row.Status) != StatusConnected || len(row.TokenEnc) == 0 {
			return Errorf(ECONFLICT, "The connection is %s; connect again to get a token.", row.Status)
		}
		tok, stale, err := s.loadToken(row.ID, row.TokenEnc)
		if err != nil {
			return err
		}
		if tok.Expiry.IsZero() || time.Until(tok.Expiry) > refreshMargin {
			if stale { // re-encrypt under the current key while we hold the row
				if err := s.storeToken(ctx, tx, row.ID, &oauth2.Token{AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken, TokenType: tok.TokenType, Expiry: tok.Expiry}); err != nil {
					return err
				}
			}
			out = accessToken(tok.AccessToken, tok.Expiry)
			return nil
		}
		if tok.RefreshToken == "" {
			return Errorf(ECONFLICT, "The token has expired and cannot be refreshed; connect again.")
		}
		provider, endpoints, err := s.oauthProvider(ctx, tx, row.ProviderID)
		if err != nil {
			return err
		}
		cfg := oauthclient.Config(provider, endpoints, s.redirectURL())
		fresh, err := cfg.TokenSource(s.OAuth.Client.Context(ctx), &oauth2.Token{
			RefreshToken: tok.RefreshToken, Expiry: time.Now().Add(-time.Second),
		}).Token()
		switch {
		case err != nil && oauthclient.IsInvalidGrant(err):
			refused = true
			if _, err := queries.ConnectionUpsertStatus(ctx, tx, &dbsqlc.ConnectionUpsertStatusParams{UserID: user.ID, ProviderID: row.ProviderID, Status: string(StatusError)}); err != nil {
				return fmt.Errorf("error marking connection broken: %w", err)
			}
			return s.Enqueuer.Connection(ctx, tx, row.ProviderID, user.ID, true)
		case err != nil:
			return &wrappedError{app: Errorf(EUNAVAILABLE, "The provider could not refresh the token; try again."), cause: err}
		}
		if fresh.RefreshToken == "" {
			fresh.RefreshToken = tok.RefreshToken // not rotated: keep the old one
		}
		if err := s.storeToken(ctx, tx, row.ID, fresh); err != nil {
			return err
		}
		out = accessToken(fresh.AccessToken, fresh.Expiry)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if refused {
		return nil, Errorf(ECONFLICT, "The provider revoked this connection; connect again.")
	}
	return out, nil
}

func accessToken(token string, expiry time.Time) *AccessToken {
	out := &AccessToken{AccessToken: token}
	if !expiry.IsZero() {
		out.ExpiresAt = &expiry
	}
	return out
}
