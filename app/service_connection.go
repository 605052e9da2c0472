package app

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/db/dbsqlc"
)

// ConnectionList lists the user's own connections.
func (s *Service) ConnectionList(ctx context.Context, user *User) ([]*Connection, error) {
	rows, err := queries.ConnectionListByUser(ctx, s.DB, user.ID)
	if err != nil {
		return nil, unavailable(fmt.Errorf("error listing connections: %w", err))
	}
	out := make([]*Connection, len(rows))
	for i, r := range rows {
		out[i] = connectionFromRow(r)
	}
	return out, nil
}

// ConnectionGet returns one of the user's own connections; anyone else's is
// not found.
func (s *Service) ConnectionGet(ctx context.Context, user *User, id uuid.UUID) (*Connection, error) {
	r, err := queries.ConnectionGetForUser(ctx, s.DB, &dbsqlc.ConnectionGetForUserParams{ID: id, UserID: user.ID})
	if err != nil {
		return nil, notFound(err, "connection")
	}
	return connectionFromRow((*dbsqlc.ConnectionListByUserRow)(r)), nil
}

// ConnectionDelete disconnects: the row goes and its access is revoked
// through the outbox. If the provider has a revocation endpoint, the token is
// handed (encrypted) to a River job that revokes it there: the provider being
// down never blocks the user.
func (s *Service) ConnectionDelete(ctx context.Context, user *User, id uuid.UUID) error {
	return s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		row, err := queries.ConnectionDeleteForUser(ctx, tx, &dbsqlc.ConnectionDeleteForUserParams{ID: id, UserID: user.ID})
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
	provider, err := queries.ProviderGetByID(ctx, tx, row.ProviderID)
	if err != nil {
		return fmt.Errorf("error reading provider: %w", err)
	}
	return s.queueRevocationsOf(ctx, tx, provider, []*dbsqlc.Oauth2Connection{row})
}

// ConnectionSetStatus records the outcome of an authorization (connected)
// or of a failed refresh (error) for the user's connection to a provider,
// creating the connection if needed. The OAuth2 callback calls it.
func (s *Service) ConnectionSetStatus(ctx context.Context, userID, providerID string, status ConnectionStatus) (*Connection, error) {
	if !status.valid() {
		return nil, Errorf(EINVALID, "unknown status %q", status)
	}
	var out *Connection
	err := s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		row, err := queries.ConnectionUpsertStatus(ctx, tx, &dbsqlc.ConnectionUpsertStatusParams{UserID: userID, ProviderID: providerID, Status: string(status)})
		if err != nil {
			if isForeignKeyViolation(err) {
				return Errorf(ENOTFOUND, "No such provider.")
			}
			return fmt.Errorf("error writing connection: %w", err)
		}
		out = &Connection{ID: row.ID, ProviderID: row.ProviderID, Status: ConnectionStatus(row.Status), CreatedAt: row.CreatedAt, UpdatedAt: row.UpdatedAt,
			Sync: SyncStatus{State: SyncPending}}
		return s.Enqueuer.Connection(ctx, tx, providerID, userID, status != StatusConnected)
	})
	return out, err
}
