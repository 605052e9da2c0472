package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/jobs"
)

// Service holds Tether's operations. Each exported method is one
// transaction: it changes rows, marks the sync keys it touched and inserts
// their River jobs, then commits all of it at once (the outbox). A failure
// anywhere, River's included, rolls back everything.
type Service struct {
	DB       *pgxpool.Pool
	Enqueuer *jobs.Enqueuer
	Keys     *keyring.Ring
	OAuth    *OAuthConfig
}

var q = dbsqlc.New()

func (s *Service) inTx(ctx context.Context, fn func(tx pgx.Tx) error) error {
	tx, err := s.DB.Begin(ctx)
	if err != nil {
		return unavailable(fmt.Errorf("error beginning transaction: %w", err))
	}
	defer tx.Rollback(ctx)
	if err := fn(tx); err != nil {
		return unavailable(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return unavailable(fmt.Errorf("error committing: %w", err))
	}
	return nil
}

// unavailable turns a lost database connection into a 503, so that clients
// retry instead of assuming a bug.
func unavailable(err error) error {
	var appErr *Error
	if errors.As(err, &appErr) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && !pgerrcode.IsConnectionException(pgErr.Code) && !pgerrcode.IsOperatorIntervention(pgErr.Code) {
		return err
	}
	var netErr net.Error
	if pgErr != nil || errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &netErr) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || pgconn.SafeToRetry(err) || isConnError(err) {
		return &wrappedError{app: Errorf(EUNAVAILABLE, "The database is unavailable; try again."), cause: err}
	}
	return err
}

func isConnError(err error) bool {
	var connErr *pgconn.ConnectError
	return errors.As(err, &connErr) || strings.Contains(err.Error(), "conn closed") || strings.Contains(err.Error(), "connection refused")
}

// wrappedError is an application error that keeps its cause for the log.
type wrappedError struct {
	app   *Error
	cause error
}

func (e *wrappedError) Error() string { return e.app.Error() + ": " + e.cause.Error() }
func (e *wrappedError) As(target any) bool {
	if t, ok := target.(**Error); ok {
		*t = e.app
		return true
	}
	return false
}
func (e *wrappedError) Unwrap() error { return e.cause }

// ---- Providers ----

// Provider is an OAuth2 provider as the API shows it. The client secret is
// write-only.
type Provider struct {
	ID               string    `json:"id"`
	Kind             string    `json:"kind"`
	DisplayName      string    `json:"display_name"`
	ClientID         string    `json:"client_id"`
	HasClientSecret  bool      `json:"has_client_secret"`
	Scope            string    `json:"scope"`
	URL              string    `json:"url"`
	UsePKCE          bool      `json:"use_pkce"`
	AuthorizationURL string    `json:"authorization_url"`
	TokenURL         string    `json:"token_url"`
	RevocationURL    string    `json:"revocation_url"`
	IssuerURL        string    `json:"issuer_url"`
	CreatedAt        time.Time `json:"created_at"`
	UpdatedAt        time.Time `json:"updated_at"`
}

func providerFromRow(p *dbsqlc.Oauth2Provider) *Provider {
	return &Provider{
		ID: p.ID, Kind: p.Kind, DisplayName: p.DisplayName, ClientID: p.ClientID,
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

var providerKinds = map[string]bool{"gitlab": true, "github": true, "generic_oauth2": true, "generic_oidc": true}

func secretAAD(providerID string) []byte {
	return []byte("oauth2_provider/" + providerID + "/client_secret")
}

func (s *Service) providerParams(in *ProviderInput, cur *dbsqlc.Oauth2Provider) (*dbsqlc.ProviderInsertParams, error) {
	p := &dbsqlc.ProviderInsertParams{UsePkce: true}
	if cur != nil {
		p = &dbsqlc.ProviderInsertParams{
			ID: cur.ID, Kind: cur.Kind, DisplayName: cur.DisplayName, ClientID: cur.ClientID,
			ClientSecretEnc: cur.ClientSecretEnc, Scope: cur.Scope, Url: cur.Url, UsePkce: cur.UsePkce,
			AuthorizationUrl: cur.AuthorizationUrl, TokenUrl: cur.TokenUrl, RevocationUrl: cur.RevocationUrl,
			IssuerUrl: cur.IssuerUrl,
		}
	} else if in.ID != nil {
		p.ID = *in.ID
	}
	set := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	set(&p.Kind, in.Kind)
	set(&p.DisplayName, in.DisplayName)
	set(&p.ClientID, in.ClientID)
	set(&p.Scope, in.Scope)
	set(&p.Url, in.URL)
	set(&p.AuthorizationUrl, in.AuthorizationURL)
	set(&p.TokenUrl, in.TokenURL)
	set(&p.RevocationUrl, in.RevocationURL)
	set(&p.IssuerUrl, in.IssuerURL)
	if in.UsePKCE != nil {
		p.UsePkce = *in.UsePKCE
	}

	if !slugPattern.MatchString(p.ID) {
		return nil, Errorf(EINVALID, "id must be a slug: lower-case letters, digits, - and _, at most 63 characters, starting with a letter or digit")
	}
	if !providerKinds[p.Kind] {
		return nil, Errorf(EINVALID, "kind must be one of gitlab, github, generic_oauth2, generic_oidc")
	}
	if err := checkText("display_name", p.DisplayName, 1, 200); err != nil {
		return nil, err
	}
	if err := checkText("client_id", p.ClientID, 1, 500); err != nil {
		return nil, err
	}
	if err := checkText("scope", p.Scope, 0, 1000); err != nil {
		return nil, err
	}
	for _, f := range []struct{ name, value string }{
		{"url", p.Url}, {"authorization_url", p.AuthorizationUrl}, {"token_url", p.TokenUrl},
		{"revocation_url", p.RevocationUrl}, {"issuer_url", p.IssuerUrl},
	} {
		if err := checkURL(f.name, f.value); err != nil {
			return nil, err
		}
	}
	switch p.Kind {
	case "gitlab":
		if p.Url == "" {
			return nil, Errorf(EINVALID, "url is required for kind gitlab (the GitLab instance, e.g. https://gitlab.com)")
		}
	case "generic_oauth2":
		if p.AuthorizationUrl == "" || p.TokenUrl == "" {
			return nil, Errorf(EINVALID, "authorization_url and token_url are required for kind generic_oauth2")
		}
	case "generic_oidc":
		if p.IssuerUrl == "" {
			return nil, Errorf(EINVALID, "issuer_url is required for kind generic_oidc")
		}
	}
	if in.ClientSecret != nil {
		if err := checkText("client_secret", *in.ClientSecret, 0, 2000); err != nil {
			return nil, err
		}
		p.ClientSecretEnc = nil
		if *in.ClientSecret != "" {
			enc, err := s.Keys.Encrypt([]byte(*in.ClientSecret), secretAAD(p.ID))
			if err != nil {
				return nil, err
			}
			p.ClientSecretEnc = enc
		}
	}
	return p, nil
}

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

// ProviderCreate creates a provider.
func (s *Service) ProviderCreate(ctx context.Context, in *ProviderInput) (*Provider, error) {
	params, err := s.providerParams(in, nil)
	if err != nil {
		return nil, err
	}
	var out *Provider
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		row, err := q.ProviderInsert(ctx, tx, params)
		if err != nil {
			if isUniqueViolation(err) {
				return Errorf(ECONFLICT, "A provider with id %q exists already.", params.ID)
			}
			return fmt.Errorf("error inserting provider: %w", err)
		}
		out = providerFromRow(row)
		return nil
	})
	return out, err
}

// ProviderList lists every provider.
func (s *Service) ProviderList(ctx context.Context) ([]*Provider, error) {
	rows, err := q.ProviderList(ctx, s.DB)
	if err != nil {
		return nil, unavailable(fmt.Errorf("error listing providers: %w", err))
	}
	out := make([]*Provider, len(rows))
	for i, r := range rows {
		out[i] = providerFromRow(r)
	}
	return out, nil
}

// ProviderGet returns one provider.
func (s *Service) ProviderGet(ctx context.Context, id string) (*Provider, error) {
	row, err := q.ProviderGetByID(ctx, s.DB, id)
	if err != nil {
		return nil, notFound(err, "provider")
	}
	return providerFromRow(row), nil
}

// ProviderUpdate changes the fields given. The id cannot change.
func (s *Service) ProviderUpdate(ctx context.Context, id string, in *ProviderInput) (*Provider, error) {
	if in.ID != nil && *in.ID != id {
		return nil, Errorf(EINVALID, "id cannot be changed")
	}
	var out *Provider
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		cur, err := q.ProviderGetByIDForUpdate(ctx, tx, id)
		if err != nil {
			return notFound(err, "provider")
		}
		p, err := s.providerParams(in, cur)
		if err != nil {
			return err
		}
		row, err := q.ProviderUpdate(ctx, tx, &dbsqlc.ProviderUpdateParams{
			ID: p.ID, Kind: p.Kind, DisplayName: p.DisplayName, ClientID: p.ClientID, ClientSecretEnc: p.ClientSecretEnc,
			Scope: p.Scope, Url: p.Url, UsePkce: p.UsePkce, AuthorizationUrl: p.AuthorizationUrl, TokenUrl: p.TokenUrl,
			RevocationUrl: p.RevocationUrl, IssuerUrl: p.IssuerUrl,
		})
		if err != nil {
			return fmt.Errorf("error updating provider: %w", err)
		}
		out = providerFromRow(row)
		return nil
	})
	return out, err
}

// ProviderDelete deletes a provider that no pool links, with its connections;
// their access is revoked through the outbox.
func (s *Service) ProviderDelete(ctx context.Context, id string) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := q.ProviderGetByIDForUpdate(ctx, tx, id); err != nil {
			return notFound(err, "provider")
		}
		linked, err := q.ProviderIsLinked(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("error checking pool links: %w", err)
		}
		if linked {
			return Errorf(ECONFLICT, "Resource pools link provider %q; unlink them first.", id)
		}
		userIDs, err := q.ConnectionDeleteByProvider(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("error deleting connections: %w", err)
		}
		if _, err := q.ProviderDelete(ctx, tx, id); err != nil {
			if isForeignKeyViolation(err) {
				return Errorf(ECONFLICT, "Resource pools link provider %q; unlink them first.", id)
			}
			return fmt.Errorf("error deleting provider: %w", err)
		}
		return s.Enqueuer.Connections(ctx, tx, id, userIDs, true)
	})
}

// ---- Resource pools ----

// Pool is a resource pool as the API shows it.
type Pool struct {
	ID      int64   `json:"id"`
	Name    string  `json:"name"`
	Public  bool    `json:"public"`
	Default bool    `json:"default"`
	Remote  *Remote `json:"remote"`
	// Sync says whether the pool's own relationships (link, public, manual
	// viewers) are applied in SpiceDB yet.
	Sync      SyncStatus `json:"sync"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`
}

// Remote links a pool to the provider whose connected users may view it.
type Remote struct {
	ProviderID string `json:"provider_id"`
}

func poolFromRow(p *dbsqlc.ResourcePool) *Pool {
	out := &Pool{ID: p.ID, Name: p.Name, Public: p.Public, Default: p.IsDefault, CreatedAt: p.CreatedAt, UpdatedAt: p.UpdatedAt}
	if p.RemoteProviderID != nil {
		out.Remote = &Remote{ProviderID: *p.RemoteProviderID}
	}
	return out
}

// PoolInput creates a pool (POST) or updates the fields given (PATCH).
// Remote distinguishes absent (keep) from null (unlink).
type PoolInput struct {
	Name    *string          `json:"name"`
	Public  *bool            `json:"public"`
	Default *bool            `json:"default"`
	Remote  Optional[Remote] `json:"remote"`
}

func (s *Service) checkRemote(ctx context.Context, tx pgx.Tx, r *Remote) error {
	if r == nil {
		return nil
	}
	if !slugPattern.MatchString(r.ProviderID) {
		return Errorf(EUNPROCESSABLE, "remote.provider_id %q names no provider", r.ProviderID)
	}
	if _, err := q.ProviderGetByID(ctx, tx, r.ProviderID); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return Errorf(EUNPROCESSABLE, "remote.provider_id %q names no provider", r.ProviderID)
		}
		return fmt.Errorf("error reading provider: %w", err)
	}
	return nil
}

// PoolCreate creates a pool; if it links a provider, that provider's
// connected users gain access (one relationship: the link).
func (s *Service) PoolCreate(ctx context.Context, in *PoolInput) (*Pool, error) {
	if in.Name == nil {
		return nil, Errorf(EINVALID, "name is required")
	}
	if err := checkText("name", *in.Name, 1, 200); err != nil {
		return nil, err
	}
	var out *Pool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if err := s.checkRemote(ctx, tx, in.Remote.Value); err != nil {
			return err
		}
		params := &dbsqlc.PoolInsertParams{Name: *in.Name, Public: deref(in.Public), IsDefault: deref(in.Default)}
		if in.Remote.Value != nil {
			params.RemoteProviderID = &in.Remote.Value.ProviderID
		}
		row, err := q.PoolInsert(ctx, tx, params)
		if err != nil {
			if isUniqueViolation(err) {
				return Errorf(ECONFLICT, "Another pool is the default pool already.")
			}
			if isForeignKeyViolation(err) {
				return Errorf(EUNPROCESSABLE, "remote.provider_id names no provider")
			}
			return fmt.Errorf("error inserting pool: %w", err)
		}
		out = poolFromRow(row)
		out.Sync = SyncStatus{State: "pending"}
		return s.Enqueuer.Pool(ctx, tx, row.ID, false)
	})
	return out, err
}

// PoolList lists the pools the user may view (all of them for admins).
func (s *Service) PoolList(ctx context.Context, user *User) ([]*Pool, error) {
	return s.pools(ctx, user, nil)
}

// pools lists the pools the user may view, or just pool onlyID.
func (s *Service) pools(ctx context.Context, user *User, onlyID *int64) ([]*Pool, error) {
	var rows []*dbsqlc.ResourcePool
	var err error
	switch {
	case user.Admin && onlyID != nil:
		var row *dbsqlc.ResourcePool
		if row, err = q.PoolGetByID(ctx, s.DB, *onlyID); err == nil {
			rows = append(rows, row)
		} else if errors.Is(err, pgx.ErrNoRows) {
			err = nil
		}
	case user.Admin:
		rows, err = q.PoolList(ctx, s.DB)
	default:
		rows, err = q.PoolListVisible(ctx, s.DB, &dbsqlc.PoolListVisibleParams{UserID: user.ID, OnlyID: onlyID})
	}
	if err != nil {
		return nil, unavailable(fmt.Errorf("error listing pools: %w", err))
	}
	out := make([]*Pool, len(rows))
	for i, r := range rows {
		out[i] = poolFromRow(r)
	}
	if err := s.attachPoolSync(ctx, out); err != nil {
		return nil, err
	}
	return out, nil
}

// attachPoolSync fills in each pool's sync status.
func (s *Service) attachPoolSync(ctx context.Context, pools []*Pool) error {
	ids := make([]int64, len(pools))
	for i, p := range pools {
		ids[i] = p.ID
		p.Sync = SyncStatus{State: "pending"}
	}
	states, err := q.SyncPoolStates(ctx, s.DB, ids)
	if err != nil {
		return unavailable(fmt.Errorf("error reading sync states: %w", err))
	}
	byID := make(map[int64]*dbsqlc.SyncPoolStatesRow, len(states))
	for _, st := range states {
		byID[st.ResourcePoolID] = st
	}
	for _, p := range pools {
		if st := byID[p.ID]; st != nil {
			p.Sync = syncStatus(&st.Generation, &st.AppliedGeneration, st.AppliedAt, st.LastError)
		}
	}
	return nil
}

// PoolGet returns one pool if the user may view it; otherwise it does not
// exist as far as the user can tell.
func (s *Service) PoolGet(ctx context.Context, user *User, id int64) (*Pool, error) {
	pools, err := s.pools(ctx, user, &id)
	if err != nil {
		return nil, err
	}
	if len(pools) == 0 {
		return nil, Errorf(ENOTFOUND, "No resource pool %d.", id)
	}
	return pools[0], nil
}

// PoolUpdate changes the fields given; relinking or unlinking moves access
// with it.
func (s *Service) PoolUpdate(ctx context.Context, id int64, in *PoolInput) (*Pool, error) {
	var out *Pool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		cur, err := q.PoolGetByIDForUpdate(ctx, tx, id)
		if err != nil {
			return notFound(err, "resource pool")
		}
		params := &dbsqlc.PoolUpdateParams{ID: id, Name: cur.Name, Public: cur.Public, IsDefault: cur.IsDefault, RemoteProviderID: cur.RemoteProviderID}
		if in.Name != nil {
			if err := checkText("name", *in.Name, 1, 200); err != nil {
				return err
			}
			params.Name = *in.Name
		}
		if in.Public != nil {
			params.Public = *in.Public
		}
		if in.Default != nil {
			params.IsDefault = *in.Default
		}
		if in.Remote.Set {
			if err := s.checkRemote(ctx, tx, in.Remote.Value); err != nil {
				return err
			}
			params.RemoteProviderID = nil
			if in.Remote.Value != nil {
				params.RemoteProviderID = &in.Remote.Value.ProviderID
			}
		}
		row, err := q.PoolUpdate(ctx, tx, params)
		if err != nil {
			if isUniqueViolation(err) {
				return Errorf(ECONFLICT, "Another pool is the default pool already.")
			}
			if isForeignKeyViolation(err) {
				return Errorf(EUNPROCESSABLE, "remote.provider_id names no provider")
			}
			return fmt.Errorf("error updating pool: %w", err)
		}
		out = poolFromRow(row)
		out.Sync = SyncStatus{State: "pending"}
		revoke := (cur.Public && !row.Public) || (cur.RemoteProviderID != nil &&
			(row.RemoteProviderID == nil || *row.RemoteProviderID != *cur.RemoteProviderID))
		return s.Enqueuer.Pool(ctx, tx, id, revoke)
	})
	return out, err
}

// PoolDelete deletes a pool and, through the outbox, all its relationships.
func (s *Service) PoolDelete(ctx context.Context, id int64) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		n, err := q.PoolDelete(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("error deleting pool: %w", err)
		}
		if n == 0 {
			return Errorf(ENOTFOUND, "No resource pool %d.", id)
		}
		return s.Enqueuer.Pool(ctx, tx, id, true)
	})
}

// PoolViewer is a user granted a pool by hand.
type PoolViewer struct {
	ID string `json:"id"`
}

// ValidUserID checks a user id given in a request (a manual viewer).
func ValidUserID(id string) error {
	if id == "" || len(id) > jobs.MaxUserIDLen || !utf8.ValidString(id) {
		return Errorf(EINVALID, "user id must be 1 to %d bytes of UTF-8", jobs.MaxUserIDLen)
	}
	for _, r := range id {
		if unicode.IsControl(r) {
			return Errorf(EINVALID, "user id must not contain control characters")
		}
	}
	return nil
}

// PoolViewerList lists a pool's manual viewers.
func (s *Service) PoolViewerList(ctx context.Context, poolID int64) ([]PoolViewer, error) {
	if _, err := q.PoolGetByID(ctx, s.DB, poolID); err != nil {
		return nil, notFound(err, "resource pool")
	}
	ids, err := q.PoolViewerList(ctx, s.DB, poolID)
	if err != nil {
		return nil, unavailable(fmt.Errorf("error listing viewers: %w", err))
	}
	out := make([]PoolViewer, len(ids))
	for i, id := range ids {
		out[i] = PoolViewer{ID: id}
	}
	return out, nil
}

// PoolViewerAdd grants users a pool by hand.
func (s *Service) PoolViewerAdd(ctx context.Context, poolID int64, viewers []PoolViewer) ([]PoolViewer, error) {
	if len(viewers) == 0 || len(viewers) > 1000 {
		return nil, Errorf(EINVALID, "give 1 to 1000 users")
	}
	for _, v := range viewers {
		if err := ValidUserID(v.ID); err != nil {
			return nil, err
		}
	}
	var out []PoolViewer
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := q.PoolGetByIDForUpdate(ctx, tx, poolID); err != nil {
			return notFound(err, "resource pool")
		}
		for _, v := range viewers {
			if _, err := q.PoolViewerInsert(ctx, tx, &dbsqlc.PoolViewerInsertParams{ResourcePoolID: poolID, UserID: v.ID}); err != nil {
				return fmt.Errorf("error inserting viewer: %w", err)
			}
		}
		ids, err := q.PoolViewerList(ctx, tx, poolID)
		if err != nil {
			return fmt.Errorf("error listing viewers: %w", err)
		}
		for _, id := range ids {
			out = append(out, PoolViewer{ID: id})
		}
		return s.Enqueuer.Pool(ctx, tx, poolID, false)
	})
	return out, err
}

// PoolViewerRemove revokes a manual grant.
func (s *Service) PoolViewerRemove(ctx context.Context, poolID int64, userID string) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := q.PoolGetByIDForUpdate(ctx, tx, poolID); err != nil {
			return notFound(err, "resource pool")
		}
		n, err := q.PoolViewerDelete(ctx, tx, &dbsqlc.PoolViewerDeleteParams{ResourcePoolID: poolID, UserID: userID})
		if err != nil {
			return fmt.Errorf("error deleting viewer: %w", err)
		}
		if n == 0 {
			return Errorf(ENOTFOUND, "That user is not a viewer of pool %d.", poolID)
		}
		return s.Enqueuer.Pool(ctx, tx, poolID, true)
	})
}

// ---- Connections ----

// Connection is a user's connection to a provider, with whether its access
// is applied in SpiceDB yet.
type Connection struct {
	ID         uuid.UUID  `json:"id"`
	ProviderID string     `json:"provider_id"`
	Status     string     `json:"status"`
	Sync       SyncStatus `json:"sync"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
}

// SyncStatus says whether a key's newest change is applied in SpiceDB.
type SyncStatus struct {
	// State is synced, pending (on its way) or retrying (the last attempt
	// failed; LastError says why).
	State     string     `json:"state"`
	AppliedAt *time.Time `json:"applied_at"`
	LastError *string    `json:"last_error"`
}

func syncStatus(generation, applied *int64, appliedAt *time.Time, lastError *string) SyncStatus {
	st := SyncStatus{State: "synced", AppliedAt: appliedAt, LastError: lastError}
	switch {
	case generation == nil:
		st.State = "pending"
	case applied != nil && *applied >= *generation:
		st.State = "synced"
		st.LastError = nil
	case lastError != nil:
		st.State = "retrying"
	default:
		st.State = "pending"
	}
	return st
}

// ConnectionList lists the user's own connections.
func (s *Service) ConnectionList(ctx context.Context, user *User) ([]*Connection, error) {
	rows, err := q.ConnectionListByUser(ctx, s.DB, user.ID)
	if err != nil {
		return nil, unavailable(fmt.Errorf("error listing connections: %w", err))
	}
	out := make([]*Connection, len(rows))
	for i, r := range rows {
		out[i] = &Connection{ID: r.ID, ProviderID: r.ProviderID, Status: r.Status, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
			Sync: syncStatus(r.Generation, r.AppliedGeneration, r.AppliedAt, r.LastError)}
	}
	return out, nil
}

// ConnectionGet returns one of the user's own connections; anyone else's is
// not found.
func (s *Service) ConnectionGet(ctx context.Context, user *User, id uuid.UUID) (*Connection, error) {
	r, err := q.ConnectionGetForUser(ctx, s.DB, &dbsqlc.ConnectionGetForUserParams{ID: id, UserID: user.ID})
	if err != nil {
		return nil, notFound(err, "connection")
	}
	return &Connection{ID: r.ID, ProviderID: r.ProviderID, Status: r.Status, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		Sync: syncStatus(r.Generation, r.AppliedGeneration, r.AppliedAt, r.LastError)}, nil
}

// ConnectionDelete disconnects: the row goes and its access is revoked
// through the outbox. If the provider has a revocation endpoint, the token is
// handed (encrypted) to a River job that revokes it there: the provider being
// down never blocks the user.
func (s *Service) ConnectionDelete(ctx context.Context, user *User, id uuid.UUID) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		row, err := q.ConnectionDeleteForUser(ctx, tx, &dbsqlc.ConnectionDeleteForUserParams{ID: id, UserID: user.ID})
		if err != nil {
			return notFound(err, "connection")
		}
		if err := s.queueRevocation(ctx, tx, row); err != nil {
			return err
		}
		return s.Enqueuer.Connection(ctx, tx, row.ProviderID, user.ID, true)
	})
}

func (s *Service) queueRevocation(ctx context.Context, tx pgx.Tx, row *dbsqlc.Oauth2Connection) error {
	if len(row.TokenEnc) == 0 || s.OAuth == nil {
		return nil
	}
	provider, err := q.ProviderGetByID(ctx, tx, row.ProviderID)
	if err != nil {
		return fmt.Errorf("error reading provider: %w", err)
	}
	// Only endpoints known without a network call: discovery (OIDC) is left
	// to the job.
	if provider.Kind == "github" || (provider.Kind == "generic_oauth2" && provider.RevocationUrl == "") {
		return nil
	}
	tok, _, err := s.loadToken(row.ID, row.TokenEnc)
	if err != nil {
		return err
	}
	token, hint := tok.RefreshToken, "refresh_token"
	if token == "" {
		token, hint = tok.AccessToken, "access_token"
	}
	revocationID := uuid.New()
	enc, err := s.Keys.Encrypt([]byte(token), jobs.RevocationAAD(revocationID))
	if err != nil {
		return err
	}
	if err := q.RevocationInsert(ctx, tx, &dbsqlc.RevocationInsertParams{ID: revocationID, ProviderID: row.ProviderID, TokenEnc: enc, TokenHint: hint}); err != nil {
		return fmt.Errorf("error queueing token revocation: %w", err)
	}
	return s.Enqueuer.Revocation(ctx, tx, revocationID)
}

// ConnectionSetStatus records the outcome of an authorization (connected)
// or of a failed refresh (error) for the user's connection to a provider,
// creating the connection if needed. The OAuth2 callback calls it.
func (s *Service) ConnectionSetStatus(ctx context.Context, userID, providerID, status string) (*Connection, error) {
	if status != "connected" && status != "error" && status != "pending" {
		return nil, Errorf(EINVALID, "unknown status %q", status)
	}
	var out *Connection
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		row, err := q.ConnectionUpsertStatus(ctx, tx, &dbsqlc.ConnectionUpsertStatusParams{UserID: userID, ProviderID: providerID, Status: status})
		if err != nil {
			if isForeignKeyViolation(err) {
				return Errorf(ENOTFOUND, "No such provider.")
			}
			return fmt.Errorf("error writing connection: %w", err)
		}
		out = &Connection{ID: row.ID, ProviderID: row.ProviderID, Status: row.Status, CreatedAt: row.CreatedAt, UpdatedAt: row.UpdatedAt,
			Sync: SyncStatus{State: "pending"}}
		return s.Enqueuer.Connection(ctx, tx, providerID, userID, status != "connected")
	})
	return out, err
}

// ---- helpers ----

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

func notFound(err error, what string) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return Errorf(ENOTFOUND, "No such %s.", what)
	}
	return unavailable(fmt.Errorf("error reading %s: %w", what, err))
}

func isUniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

func isForeignKeyViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23503"
}
