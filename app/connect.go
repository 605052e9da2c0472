package app

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/oauthclient"
)

// The life of a connection on the page: an authorization in flight, its
// end (connected, denied, expired, failed), and the access that follows.

func connectionFromRow(r *dbsqlc.ConnectionListByUserRow) *Connection {
	scopes := r.GrantedScopes
	if scopes == nil {
		scopes = []string{}
	}
	return &Connection{
		ID: r.ID, ProviderID: r.ProviderID, Status: ConnectionStatus(r.Status), Account: r.Account, Scopes: scopes,
		ConnectedAt: r.ConnectedAt, AuthorizingUntil: r.AuthorizingUntil, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		Sync: syncStatus(r.Generation, r.AppliedGeneration, r.AppliedAt, r.LastError),
	}
}

// stateTTL is how long an authorization may take (StateTTL unless the
// configuration says otherwise: tests make it short to see it expire).
func (c *OAuthConfig) stateTTL() time.Duration {
	if c == nil || c.StateTTL <= 0 {
		return StateTTL
	}
	return c.StateTTL
}

// errStateExpired is told only to the user and browser the state was made
// for (checked first): anyone else learns nothing from it.
var errStateExpired = Errorf(EINVALID, "The authorization took too long and expired. Start again.")

// endAuthorization records that an authorization ended without connecting
// (denied, expired, failed): a row that was never connected goes, a
// connected one stops waiting and keeps its access. Neither changes what
// SpiceDB should hold (only connected rows grant), so no job is needed.
func (s *Service) endAuthorization(ctx context.Context, userID, providerID string) error {
	return s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := queries.ConnectionDeletePending(ctx, tx, &dbsqlc.ConnectionDeletePendingParams{UserID: userID, ProviderID: providerID}); err != nil {
			return fmt.Errorf("error ending pending connection: %w", err)
		}
		if err := queries.ConnectionEndAuthorizing(ctx, tx, &dbsqlc.ConnectionEndAuthorizingParams{UserID: userID, ProviderID: providerID}); err != nil {
			return fmt.Errorf("error ending authorization: %w", err)
		}
		return nil
	})
}

// storeIdentity records the account and scopes an authorization connected.
func storeIdentity(ctx context.Context, tx pgx.Tx, row *dbsqlc.Oauth2Connection, id oauthclient.Identity) error {
	var account *string
	if id.Account != "" {
		account = &id.Account
	}
	scopes := id.Scopes
	if scopes == nil {
		scopes = []string{}
	}
	if err := queries.ConnectionSetIdentity(ctx, tx, &dbsqlc.ConnectionSetIdentityParams{ID: row.ID, Account: account, GrantedScopes: scopes}); err != nil {
		return fmt.Errorf("error storing the connected account: %w", err)
	}
	return nil
}

// KeySync is the sync state of one of the user's connection keys, whether
// or not the connection still exists: after a disconnect it says how far
// the revocation is.
type KeySync struct {
	ProviderID string
	Sync       SyncStatus
	// Revoking: a change that removes access is not applied yet.
	Revoking bool
}

// ConnectionKeys returns the sync state of the user's connection keys, by
// provider id.
func (s *Service) ConnectionKeys(ctx context.Context, user *User) (map[string]KeySync, error) {
	rows, err := queries.ConnectionSyncKeysByUser(ctx, s.DB, user.ID)
	if err != nil {
		return nil, unavailable(fmt.Errorf("error reading sync states: %w", err))
	}
	out := make(map[string]KeySync, len(rows))
	for _, r := range rows {
		out[r.ProviderID] = KeySync{
			ProviderID: r.ProviderID,
			Sync:       syncStatus(&r.Generation, &r.AppliedGeneration, r.AppliedAt, r.LastError),
			Revoking:   r.RevokePendingSince != nil,
		}
	}
	return out, nil
}
