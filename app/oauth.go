package app

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"sync"
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
	// AllowHTTP accepts plain-http provider URLs on any host (dev mode);
	// otherwise only loopback hosts may be plain http.
	AllowHTTP bool
	// RefreshTimeout bounds a token refresh (the provider call and storing
	// its answer), whatever happens to the request that started it; default
	// 20 s.
	RefreshTimeout time.Duration
	// MaxRefreshes bounds the refreshes in flight in this process; default
	// DefaultMaxRefreshes.
	MaxRefreshes int

	refreshOnce sync.Once
	refresher   *refresher
}

// MaxStatesPerUser bounds a user's authorizations in flight: another one
// drops the oldest.
const MaxStatesPerUser = 20

// Initiator says which page started an authorization, by the request's
// fetch metadata.
type Initiator int

const (
	// InitiatorOwnPage: Tether's own page, or no browser metadata at all.
	InitiatorOwnPage Initiator = iota
	// InitiatorOtherSite: a top-level navigation from another site (an
	// allowed origin's app, or a page that wants to put a pending
	// connection into the user's list).
	InitiatorOtherSite
)

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
// caller's existing binding cookie, if any. Started from another site, it
// records no pending connection: the SameSite=Lax cookie rides along on a
// top-level GET, so any page could otherwise put one into the user's list;
// the connection is created when the flow completes.
func (s *Service) Authorize(ctx context.Context, user *User, providerID, nextURL, browserBinding string, from Initiator) (*Authorization, error) {
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
	cfg := s.OAuth.Client.Config(provider, endpoints, s.redirectURL())
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
	err = s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		return s.storeState(ctx, tx, user, providerID, &dbsqlc.StateInsertParams{
			StateHash: hashToken(state), UserID: user.ID, ProviderID: providerID, BrowserHash: hashToken(browserBinding),
			CodeVerifierEnc: verifierEnc, NextUrl: next, ExpiresAt: expiresAt,
		}, from)
	})
	if err != nil {
		return nil, err
	}
	return &Authorization{RedirectURL: cfg.AuthCodeURL(state, opts...), BrowserBinding: browserBinding}, nil
}

// storeState stores a state, keeping the user's at most
// MaxStatesPerUser, and (unless another site started it) marks the
// connection pending.
func (s *Service) storeState(ctx context.Context, tx pgx.Tx, user *User, providerID string, st *dbsqlc.StateInsertParams, from Initiator) error {
	// One user's authorizations one at a time, so the cap holds.
	if err := queries.StateLockUser(ctx, tx, user.ID); err != nil {
		return fmt.Errorf("error locking the user's states: %w", err)
	}
	if _, err := queries.StateDeleteExpired(ctx, tx); err != nil {
		return fmt.Errorf("error pruning expired states: %w", err)
	}
	if err := queries.StateInsert(ctx, tx, st); err != nil {
		if isForeignKeyViolation(err) {
			return Errorf(ENOTFOUND, "No such provider.")
		}
		return fmt.Errorf("error storing state: %w", err)
	}
	if _, err := queries.StateTrimForUser(ctx, tx, &dbsqlc.StateTrimForUserParams{UserID: user.ID, Keep: MaxStatesPerUser}); err != nil {
		return fmt.Errorf("error dropping the oldest states: %w", err)
	}
	if from == InitiatorOtherSite {
		return nil
	}
	// A new connection starts pending; an existing one keeps its status
	// (and its access) until this authorization completes.
	if _, err := queries.ConnectionInsertPending(ctx, tx, &dbsqlc.ConnectionInsertPendingParams{
		UserID: user.ID, ProviderID: providerID, AuthorizingUntil: &st.ExpiresAt,
	}); err != nil {
		return fmt.Errorf("error recording pending connection: %w", err)
	}
	return nil
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

func (s *Service) storeToken(ctx context.Context, tx pgx.Tx, connectionID uuid.UUID, tok *oauth2.Token) error {
	enc, err := s.encryptToken(connectionID, tok)
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

// encryptToken encrypts a token for its connection's row.
func (s *Service) encryptToken(connectionID uuid.UUID, tok *oauth2.Token) ([]byte, error) {
	plain, err := json.Marshal(storedToken{AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken, TokenType: tok.TokenType, Expiry: tok.Expiry})
	if err != nil {
		return nil, fmt.Errorf("error encoding token: %w", err)
	}
	return s.Keys.Encrypt(plain, keyring.TokenAAD(connectionID.String()))
}

func tokenOf(st *storedToken) *oauth2.Token {
	return &oauth2.Token{AccessToken: st.AccessToken, RefreshToken: st.RefreshToken, TokenType: st.TokenType, Expiry: st.Expiry}
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
