package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"golang.org/x/oauth2"
	"golang.org/x/sync/singleflight"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/oauthclient"
)

// AccessToken is what the token endpoint returns.
type AccessToken struct {
	AccessToken string     `json:"access_token"`
	ExpiresAt   *time.Time `json:"expires_at"`
}

// refreshMargin refreshes tokens that would expire this soon.
const refreshMargin = 30 * time.Second

// DefaultMaxRefreshes is OAuthConfig.MaxRefreshes' default: few enough that
// refreshes stuck at a slow provider never matter to the database pool (they
// hold no connection while they wait anyway), enough for a burst.
const DefaultMaxRefreshes = 8

// Refresh timings.
const (
	defaultRefreshTimeout = 20 * time.Second
	// storeTimeout bounds storing a refresh's answer: it runs even if the
	// refresh used up its own deadline, since the provider may have rotated
	// the refresh token already.
	storeTimeout = 10 * time.Second
	// leasePollInterval is how often a refresh waiting for another
	// process's looks at the row.
	leasePollInterval = 25 * time.Millisecond
)

var (
	errRefreshBusy    = Errorf(EUNAVAILABLE, "Too many token refreshes are in flight; try again.")
	errRefreshRevoked = Errorf(ECONFLICT, "The provider revoked this connection; connect again.")
	errRefreshRace    = Errorf(EUNAVAILABLE, "The connection changed while its token was refreshed; try again.")
)

// refresher runs token refreshes: one per connection in this process
// (singleflight) and at most MaxRefreshes at once (slots); one per
// connection across processes by a lease on the row.
type refresher struct {
	group   singleflight.Group
	slots   chan struct{}
	timeout time.Duration
}

func (s *Service) refresher() *refresher {
	o := s.OAuth
	o.refreshOnce.Do(func() {
		o.refresher = &refresher{
			slots:   make(chan struct{}, cmpOr(o.MaxRefreshes, DefaultMaxRefreshes)),
			timeout: cmpOr(o.RefreshTimeout, defaultRefreshTimeout),
		}
	})
	return o.refresher
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// ConnectionToken returns a valid access token of the user's connection,
// refreshing it when it has expired. A refresh runs outside the request: a
// client that hangs up after the provider rotated the refresh token does not
// lose the new one. No database connection or row lock is held while the
// provider answers (a slow provider cannot tie up the pool River shares),
// concurrent requests for one connection make one provider call, and a
// refresh the provider refuses with invalid_grant marks the connection
// error, which revokes its access.
func (s *Service) ConnectionToken(ctx context.Context, user *User, id uuid.UUID) (*AccessToken, error) {
	row, tok, err := s.ownedToken(ctx, user, id)
	if err != nil {
		return nil, err
	}
	if fresh(tok) {
		return accessToken(tok.AccessToken, tok.Expiry), nil
	}
	if tok.RefreshToken == "" {
		return nil, Errorf(ECONFLICT, "The token has expired and cannot be refreshed; connect again.")
	}
	r := s.refresher()
	ch := r.group.DoChan(id.String(), func() (any, error) {
		refreshCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.timeout)
		defer cancel()
		return s.refresh(refreshCtx, r, row, tok)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*AccessToken), nil
	case <-ctx.Done():
		// The refresh goes on without us and stores what it gets.
		return nil, Errorf(EUNAVAILABLE, "The request ended before the token refresh did; try again.")
	}
}

func fresh(tok *storedToken) bool {
	return tok.Expiry.IsZero() || time.Until(tok.Expiry) > refreshMargin
}

// ownedToken reads the user's connection and its token (re-encrypting it
// under the current key if it is under an older one).
func (s *Service) ownedToken(ctx context.Context, user *User, id uuid.UUID) (*dbsqlc.Oauth2Connection, *storedToken, error) {
	row, err := queries.ConnectionGetOwned(ctx, s.DB, &dbsqlc.ConnectionGetOwnedParams{ID: id, UserID: user.ID})
	if err != nil {
		return nil, nil, notFound(err, "connection")
	}
	if ConnectionStatus(row.Status) != StatusConnected || len(row.TokenEnc) == 0 {
		return nil, nil, Errorf(ECONFLICT, "The connection is %s; connect again to get a token.", row.Status)
	}
	tok, stale, err := s.loadToken(row.ID, row.TokenEnc)
	if err != nil {
		return nil, nil, err
	}
	if stale {
		if enc, err := s.encryptToken(row.ID, tokenOf(tok)); err == nil {
			// Compare-and-set: a refresh that stored meanwhile wins.
			n, err := queries.ConnectionReencryptToken(ctx, s.DB, &dbsqlc.ConnectionReencryptTokenParams{ID: row.ID, TokenEnc: enc, OldEnc: row.TokenEnc})
			if err == nil && n == 1 {
				row.TokenEnc = enc
			}
		}
	}
	return row, tok, nil
}

// refresh refreshes row's token under the connection's lease, or waits for
// the process that holds it.
func (s *Service) refresh(ctx context.Context, r *refresher, row *dbsqlc.Oauth2Connection, tok *storedToken) (*AccessToken, error) {
	select {
	case r.slots <- struct{}{}:
		defer func() { <-r.slots }()
	case <-ctx.Done():
		return nil, errRefreshBusy
	}
	leaseID := uuid.New()
	lease := r.timeout + storeTimeout + 5*time.Second
	for {
		_, err := queries.ConnectionTakeRefreshLease(ctx, s.DB, &dbsqlc.ConnectionTakeRefreshLeaseParams{
			LeaseID: &leaseID, LeaseSeconds: lease.Seconds(), ID: row.ID, TokenEnc: row.TokenEnc,
		})
		if err == nil {
			return s.refreshLeased(ctx, row, tok, leaseID)
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, unavailable(fmt.Errorf("error taking the refresh lease: %w", err))
		}
		// Another process refreshes (or did): wait for its result.
		done, out, cur, err := s.awaitRefresh(ctx, row)
		if done {
			return out, err
		}
		row = cur // its token, as it is now
	}
}

// awaitRefresh polls row until its token was refreshed (done, with the new
// token), the lease is free (not done: take it, on the row as it is now:
// its token may have been re-encrypted meanwhile), or the connection broke.
func (s *Service) awaitRefresh(ctx context.Context, row *dbsqlc.Oauth2Connection) (bool, *AccessToken, *dbsqlc.Oauth2Connection, error) {
	ticker := time.NewTicker(leasePollInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, nil, nil, Errorf(EUNAVAILABLE, "The token refresh took too long; try again.")
		case <-ticker.C:
		}
		cur, err := queries.ConnectionGetOwned(ctx, s.DB, &dbsqlc.ConnectionGetOwnedParams{ID: row.ID, UserID: row.UserID})
		if err != nil {
			return true, nil, nil, notFound(err, "connection")
		}
		if ConnectionStatus(cur.Status) != StatusConnected || len(cur.TokenEnc) == 0 {
			return true, nil, nil, errRefreshRevoked
		}
		leaseFree := cur.RefreshLeaseUntil == nil || time.Until(*cur.RefreshLeaseUntil) < 0
		if string(cur.TokenEnc) == string(row.TokenEnc) && !leaseFree {
			continue
		}
		tok, _, err := s.loadToken(cur.ID, cur.TokenEnc)
		if err != nil {
			return true, nil, nil, err
		}
		if fresh(tok) {
			return true, accessToken(tok.AccessToken, tok.Expiry), nil, nil
		}
		if leaseFree {
			return false, nil, cur, nil
		}
		row = cur
	}
}

// refreshLeased calls the provider and stores its answer; the lease is ours.
func (s *Service) refreshLeased(ctx context.Context, row *dbsqlc.Oauth2Connection, tok *storedToken, leaseID uuid.UUID) (*AccessToken, error) {
	// Whatever happens to ctx now, the answer is stored (or the lease
	// given back) within storeTimeout.
	storeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancel()
	release := func() {
		_ = queries.ConnectionReleaseRefreshLease(storeCtx, s.DB, &dbsqlc.ConnectionReleaseRefreshLeaseParams{ID: row.ID, LeaseID: &leaseID})
	}
	provider, endpoints, err := s.oauthProvider(ctx, s.DB, row.ProviderID)
	if err != nil {
		release()
		return nil, err
	}
	cfg := s.OAuth.Client.Config(provider, endpoints, s.redirectURL())
	fresh, err := cfg.TokenSource(s.OAuth.Client.Context(ctx), &oauth2.Token{
		RefreshToken: tok.RefreshToken, Expiry: time.Now().Add(-time.Second),
	}).Token()
	switch {
	case err != nil && oauthclient.IsInvalidGrant(err):
		return nil, s.markBroken(storeCtx, row, leaseID)
	case err != nil:
		release()
		return nil, refreshFailure(err)
	}
	if fresh.RefreshToken == "" {
		fresh.RefreshToken = tok.RefreshToken // not rotated: keep the old one
	}
	return s.storeRefreshed(storeCtx, row, tok, fresh, leaseID)
}

// refreshFailure is the answer to a refresh the provider did not complete.
// The provider's own text is never kept (see oauthclient.Describe).
func refreshFailure(err error) error {
	cause := oauthclient.Describe(err)
	if oauthclient.IsTemporary(err) {
		return &wrappedError{app: Errorf(EUNAVAILABLE, "The provider could not refresh the token; try again."), cause: cause}
	}
	return &wrappedError{app: Errorf(EBADGATEWAY, "The provider answered the token refresh with something Tether does not accept (a redirect, an error, or an oversized or plain-http answer)."), cause: cause}
}

func (s *Service) markBroken(ctx context.Context, row *dbsqlc.Oauth2Connection, leaseID uuid.UUID) error {
	err := s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		broken, err := queries.ConnectionMarkBrokenIfLeased(ctx, tx, &dbsqlc.ConnectionMarkBrokenIfLeasedParams{ID: row.ID, LeaseID: &leaseID})
		if errors.Is(err, pgx.ErrNoRows) {
			return errRefreshRace // re-authorized meanwhile: that grant is a new one
		}
		if err != nil {
			return fmt.Errorf("error marking connection broken: %w", err)
		}
		return s.Enqueuer.Connection(ctx, tx, broken.ProviderID, broken.UserID, true)
	})
	if err != nil {
		return err
	}
	return errRefreshRevoked
}

// storeRefreshed stores a refreshed token if the lease is still ours. If it
// is not (a re-authorization replaced the token meanwhile), the refreshed
// grant is orphaned: its refresh token is revoked.
func (s *Service) storeRefreshed(ctx context.Context, row *dbsqlc.Oauth2Connection, old *storedToken, fresh *oauth2.Token, leaseID uuid.UUID) (*AccessToken, error) {
	enc, err := s.encryptToken(row.ID, fresh)
	if err != nil {
		return nil, err
	}
	var expires *time.Time
	if !fresh.Expiry.IsZero() {
		expires = &fresh.Expiry
	}
	var stored bool
	err = s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		n, err := queries.ConnectionStoreRefreshed(ctx, tx, &dbsqlc.ConnectionStoreRefreshedParams{
			ID: row.ID, TokenEnc: enc, TokenExpiresAt: expires, LeaseID: &leaseID,
		})
		if err != nil {
			return fmt.Errorf("error storing the refreshed token: %w", err)
		}
		if stored = n == 1; stored || fresh.RefreshToken == old.RefreshToken {
			return nil
		}
		provider, err := queries.ProviderGetByID(ctx, tx, row.ProviderID)
		if err != nil {
			return notFound(err, "provider")
		}
		return s.queueRevocations(ctx, tx, provider, []revocation{{token: fresh.RefreshToken, hint: "refresh_token"}})
	})
	switch {
	case err != nil:
		return nil, err
	case !stored:
		return nil, errRefreshRace
	}
	return accessToken(fresh.AccessToken, fresh.Expiry), nil
}

func accessToken(token string, expiry time.Time) *AccessToken {
	out := &AccessToken{AccessToken: token}
	if !expiry.IsZero() {
		out.ExpiresAt = &expiry
	}
	return out
}
