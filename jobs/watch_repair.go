package jobs

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/riverqueue/river"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// How the watcher treats one transaction's changes:
//
//   - signed by Tether (valid MAC, fresh, nonce not seen before): nothing to
//     do, the workers wrote what Postgres implied;
//   - anything else is checked against Postgres, change by change: a TOUCH of
//     a relationship Postgres implies, or a DELETE of one it does not, agrees
//     (a restore's bulk import, which SpiceDB cannot sign; a harmless edit);
//   - a change that disagrees is foreign drift: the owning key's sync job is
//     inserted, marked as a repair (it always writes, even on a settled key;
//     a key with no sync_state row desires nothing, so its job deletes), or,
//     for a relationship no Tether key can own (an id Tether never makes), it
//     is deleted at once.
//
// The check reads Postgres after the change committed in SpiceDB, so a later
// change to the key has its own job, which writes after; the repair job reads
// Postgres after that, writes its newest state and is fenced like any other.

// handle processes one Watch message.
func (s *watchSession) handle(ctx context.Context, m *spicedb.WatchMessage) error {
	if m.SchemaUpdated {
		state, err := s.h.syncer.SpiceDB.CheckSchema(ctx)
		if err != nil {
			return err
		}
		if state != spicedb.SchemaCurrent {
			return errStoreChanged
		}
	}
	if len(m.Changes) > 0 {
		if s.own(m) {
			s.h.syncer.Metrics.observeWatchChanges("tether", len(m.Changes))
		} else {
			s.h.syncer.Metrics.observeWatchChanges("other", len(m.Changes))
			repaired, err := s.repair(ctx, m)
			if err != nil {
				return err
			}
			if repaired {
				return nil // the cursor was saved with the repair jobs
			}
		}
	}
	if m.Token != "" {
		s.cursor = m.Token
	}
	if time.Since(s.savedAt) >= time.Second {
		return s.heartbeat(ctx)
	}
	return nil
}

// own reports whether the message's transaction is one of Tether's writes.
func (s *watchSession) own(m *spicedb.WatchMessage) bool {
	if len(m.Metadata) != 1 { // none, or several transactions at one revision
		return false
	}
	w, ok := s.key.Verify(m.Metadata[0])
	now := time.Now()
	fresh := s.h.cfg.Freshness
	if !ok || w.At.Before(now.Add(-fresh)) || w.At.After(now.Add(fresh)) {
		return false
	}
	if _, replayed := s.seen[w.Nonce]; replayed {
		return false
	}
	s.seen[w.Nonce] = w.At
	if len(s.seen) > 4096 && len(s.seen)%1024 == 0 {
		for nonce, at := range s.seen {
			if at.Before(now.Add(-fresh)) {
				delete(s.seen, nonce)
			}
		}
	}
	return true
}

// watchChange is one change and the ids its key would have.
type watchChange struct {
	rel    spicedb.Relationship
	touch  bool
	poolID int64  // resource_pool id, if canonical (else 0)
	userID string // the user of a user subject, if canonical
	// mappable: Postgres can imply it (ids Tether makes, relation and
	// subject type of the schema).
	mappable bool
}

func newWatchChange(u spicedb.Update) watchChange {
	c := watchChange{rel: u.Relationship, touch: !u.Delete}
	r := c.rel
	if r.SubjectType == spicedb.TypeUser && r.SubjectID != spicedb.Wildcard {
		if id, err := spicedb.UserIDFromSubjectID(r.SubjectID); err == nil {
			c.userID = id
		}
	}
	if r.ResourceType == spicedb.TypeResourcePool {
		if id, err := strconv.ParseInt(r.ResourceID, 10, 64); err == nil && id > 0 && strconv.FormatInt(id, 10) == r.ResourceID {
			c.poolID = id
		}
	}
	switch {
	case r.ResourceType == spicedb.TypeOAuth2Client && r.Relation == spicedb.RelConnected && r.SubjectType == spicedb.TypeUser:
		c.mappable = c.userID != ""
	case c.poolID != 0 && r.Relation == spicedb.RelProvider && r.SubjectType == spicedb.TypeOAuth2Client:
		c.mappable = true
	case c.poolID != 0 && r.Relation == spicedb.RelViewer && r.SubjectType == spicedb.TypeUser:
		c.mappable = r.SubjectID == spicedb.Wildcard || c.userID != ""
	}
	return c
}

// repair checks a foreign transaction's changes against Postgres and
// repairs those that disagree. It reports whether it saved the cursor.
func (s *watchSession) repair(ctx context.Context, m *spicedb.WatchMessage) (bool, error) {
	var drift []watchChange
	for chunk := range slices.Chunk(m.Changes, 5000) {
		changes := make([]watchChange, len(chunk))
		for i, u := range chunk {
			changes[i] = newWatchChange(u)
		}
		desired, err := s.desired(ctx, changes)
		if err != nil {
			return false, err
		}
		for i, c := range changes {
			if c.touch != desired[i] {
				drift = append(drift, c)
			}
		}
	}
	if len(drift) == 0 {
		return false, nil
	}
	jobs, deletes := repairPlan(drift)
	for _, c := range drift {
		s.h.syncer.Metrics.observeForeign(c.rel.Relation)
	}
	s.h.syncer.Logger.WarnContext(ctx, "foreign changes to SpiceDB disagree with Postgres; repairing",
		"changes", len(drift), "keys", len(jobs), "deleted_now", len(deletes))
	if len(deletes) > 0 {
		if _, err := s.h.syncer.SpiceDB.Write(ctx, deletes); err != nil {
			return false, err
		}
		for _, u := range deletes {
			s.h.syncer.Metrics.observeRepaired([]string{u.Relationship.Relation})
		}
	}
	return true, s.enqueue(ctx, jobs, m.Token)
}

// desired asks Postgres, in one statement, whether it implies each change's
// relationship.
func (s *watchSession) desired(ctx context.Context, changes []watchChange) ([]bool, error) {
	p := &dbsqlc.WatchDesiredParams{}
	for i, c := range changes {
		if !c.mappable {
			continue
		}
		r := c.rel
		p.ResourceTypes, p.ResourceIds, p.Relations = append(p.ResourceTypes, r.ResourceType), append(p.ResourceIds, r.ResourceID), append(p.Relations, r.Relation)
		p.SubjectTypes, p.SubjectIds = append(p.SubjectTypes, r.SubjectType), append(p.SubjectIds, r.SubjectID)
		p.PoolIds, p.UserIds, p.Ords = append(p.PoolIds, c.poolID), append(p.UserIds, c.userID), append(p.Ords, int64(i))
	}
	desired := make([]bool, len(changes))
	if len(p.Ords) == 0 {
		return desired, nil
	}
	rows, err := dbsqlc.New().WatchDesired(ctx, s.conn, p)
	if err != nil {
		return nil, fmt.Errorf("%w: error checking changes against Postgres: %w", errLeaseLost, err)
	}
	for _, row := range rows {
		desired[row.Ord] = row.Desired
	}
	return desired, nil
}

// repairPlan turns drift into one repair job per key (listing the relations
// repaired), and deletes for relationships no key of Tether's can own.
func repairPlan(drift []watchChange) ([]river.InsertManyParams, []spicedb.Update) {
	byKey := map[syncKey]int{}
	var jobs []river.InsertManyParams
	var deletes []spicedb.Update
	add := func(k syncKey, args func() river.JobArgs, rel string) {
		i, ok := byKey[k]
		if !ok {
			i = len(jobs)
			byKey[k] = i
			jobs = append(jobs, river.InsertManyParams{Args: args(), InsertOpts: &river.InsertOpts{Priority: PriorityRevoke}})
		}
		switch a := jobs[i].Args.(type) {
		case SyncConnectionArgs:
			a.Repair = append(a.Repair, rel)
			jobs[i].Args = a
		case SyncPoolArgs:
			a.Repair = append(a.Repair, rel)
			jobs[i].Args = a
		}
	}
	for _, c := range drift {
		r := c.rel
		switch {
		case r.ResourceType == spicedb.TypeOAuth2Client && c.mappable:
			add(syncKey{KeyKindConnection, ConnectionKeyID(r.ResourceID, c.userID)},
				func() river.JobArgs { return SyncConnectionArgs{ProviderID: r.ResourceID, UserID: c.userID} }, r.Relation)
		case c.poolID != 0:
			// The pool's job removes every relationship of the pool that
			// Postgres does not imply, whatever its subject.
			add(syncKey{KeyKindPool, r.ResourceID}, func() river.JobArgs { return SyncPoolArgs{ResourcePoolID: c.poolID} }, r.Relation)
		case c.touch:
			deletes = append(deletes, spicedb.Update{Relationship: r, Delete: true})
		}
	}
	return jobs, deletes
}

// enqueue inserts the repair jobs and saves the cursor in one transaction
// on the lease's connection: both or neither, and only while the lease is
// held. (If the cursor may not be saved yet, the jobs go alone.)
func (s *watchSession) enqueue(ctx context.Context, jobs []river.InsertManyParams, cursor string) error {
	tx, err := s.conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", errLeaseLost, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit, a no-op
	if len(jobs) > 0 {
		if _, err := s.h.enqueuer.River.InsertManyTx(ctx, tx, jobs); err != nil {
			return fmt.Errorf("%w: error inserting repair jobs: %w", errLeaseLost, err)
		}
	}
	save := cursor != "" && s.maySave()
	if save {
		holder := s.h.cfg.Holder
		if err := dbsqlc.New().WatchCursorSave(ctx, tx, &dbsqlc.WatchCursorSaveParams{Cursor: &cursor, Holder: &holder}); err != nil {
			return fmt.Errorf("%w: %w", errLeaseLost, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("%w: %w", errLeaseLost, err)
	}
	if cursor != "" {
		s.cursor = cursor
	}
	if save {
		s.saved, s.savedAt = cursor, time.Now()
	}
	return nil
}
