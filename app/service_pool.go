package app

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/db/dbsqlc"
)

func (s *Service) checkRemote(ctx context.Context, tx pgx.Tx, r *Remote) error {
	if r == nil {
		return nil
	}
	if !slugPattern.MatchString(r.ProviderID) {
		return Errorf(EUNPROCESSABLE, "remote.provider_id %q names no provider", r.ProviderID)
	}
	if _, err := queries.ProviderGetByID(ctx, tx, r.ProviderID); err != nil {
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
	err := s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		if err := s.checkRemote(ctx, tx, in.Remote.Value); err != nil {
			return err
		}
		params := &dbsqlc.PoolInsertParams{Name: *in.Name, Public: deref(in.Public), IsDefault: deref(in.Default)}
		if in.Remote.Value != nil {
			params.RemoteProviderID = &in.Remote.Value.ProviderID
		}
		row, err := queries.PoolInsert(ctx, tx, params)
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
		out.Sync = SyncStatus{State: SyncPending}
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
		if row, err = queries.PoolGetByID(ctx, s.DB, *onlyID); err == nil {
			rows = append(rows, row)
		} else if errors.Is(err, pgx.ErrNoRows) {
			err = nil
		}
	case user.Admin:
		rows, err = queries.PoolList(ctx, s.DB)
	default:
		rows, err = queries.PoolListVisible(ctx, s.DB, &dbsqlc.PoolListVisibleParams{UserID: user.ID, OnlyID: onlyID})
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
		p.Sync = SyncStatus{State: SyncPending}
	}
	states, err := queries.SyncPoolStates(ctx, s.DB, ids)
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
	err := s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		cur, err := queries.PoolGetByIDForUpdate(ctx, tx, id)
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
		row, err := queries.PoolUpdate(ctx, tx, params)
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
		out.Sync = SyncStatus{State: SyncPending}
		revoke := (cur.Public && !row.Public) || (cur.RemoteProviderID != nil &&
			(row.RemoteProviderID == nil || *row.RemoteProviderID != *cur.RemoteProviderID))
		return s.Enqueuer.Pool(ctx, tx, id, revoke)
	})
	return out, err
}

// PoolDelete deletes a pool and, through the outbox, all its relationships.
func (s *Service) PoolDelete(ctx context.Context, id int64) error {
	return s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		n, err := queries.PoolDelete(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("error deleting pool: %w", err)
		}
		if n == 0 {
			return Errorf(ENOTFOUND, "No resource pool %d.", id)
		}
		return s.Enqueuer.Pool(ctx, tx, id, true)
	})
}

// PoolViewerList lists a pool's manual viewers.
func (s *Service) PoolViewerList(ctx context.Context, poolID int64) ([]PoolViewer, error) {
	if _, err := queries.PoolGetByID(ctx, s.DB, poolID); err != nil {
		return nil, notFound(err, "resource pool")
	}
	ids, err := queries.PoolViewerList(ctx, s.DB, poolID)
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
	err := s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := queries.PoolGetByIDForUpdate(ctx, tx, poolID); err != nil {
			return notFound(err, "resource pool")
		}
		for _, v := range viewers {
			if _, err := queries.PoolViewerInsert(ctx, tx, &dbsqlc.PoolViewerInsertParams{ResourcePoolID: poolID, UserID: v.ID}); err != nil {
				return fmt.Errorf("error inserting viewer: %w", err)
			}
		}
		ids, err := queries.PoolViewerList(ctx, tx, poolID)
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
	return s.inTx(ctx, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := queries.PoolGetByIDForUpdate(ctx, tx, poolID); err != nil {
			return notFound(err, "resource pool")
		}
		n, err := queries.PoolViewerDelete(ctx, tx, &dbsqlc.PoolViewerDeleteParams{ResourcePoolID: poolID, UserID: userID})
		if err != nil {
			return fmt.Errorf("error deleting viewer: %w", err)
		}
		if n == 0 {
			return Errorf(ENOTFOUND, "That user is not a viewer of pool %d.", poolID)
		}
		return s.Enqueuer.Pool(ctx, tx, poolID, true)
	})
}
