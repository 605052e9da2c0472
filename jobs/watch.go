package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// The watcher: one per deployment, in whichever working process holds the
// watch lease, a session-level Postgres advisory lock. The lease lives as
// long as the connection that took it; every write the watcher makes to
// Postgres (cursor, jobs, heartbeat) goes through that connection, so a
// watcher that lost it (crash, partition, Postgres restart) can do nothing
// more, and another process takes over within HealConfig.LeaseRetry. It
// resumes from the last revision processed, kept in spicedb_watch.cursor.

// watchLockID is the watch lease's advisory lock (apart from River's and
// the reconciler's).
const watchLockID int64 = 0x7e7e_0002

// Watch modes, as stored in spicedb_watch.mode.
const (
	WatchModeStarting     = "starting"
	WatchModeWatch        = "watch"        // foreign changes repaired within seconds
	WatchModePeriodic     = "periodic"     // Watch unavailable: the periodic reconcile repairs
	WatchModeReconnecting = "reconnecting" // the stream broke; reconnecting
)

// heartbeatInterval is how often the lease holder records progress.
const heartbeatInterval = 2 * time.Second

func (h *Healer) watchLoop(ctx context.Context) {
	for {
		if err := h.holdLease(ctx); err != nil && ctx.Err() == nil {
			h.syncer.Logger.WarnContext(ctx, "SpiceDB watcher stopped; another process (or this one) takes over", "error", spicedb.ScrubError(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(h.cfg.LeaseRetry):
		}
	}
}

// holdLease takes the watch lease if it is free, and watches while it
// holds it.
func (h *Healer) holdLease(ctx context.Context) error {
	conn, err := h.syncer.DB.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("error acquiring a connection for the watch lease: %w", err)
	}
	got, err := dbsqlc.New().WatchLeaseTry(ctx, conn, watchLockID)
	if err != nil || !got {
		conn.Release()
		if err != nil {
			return fmt.Errorf("error trying the watch lease: %w", err)
		}
		return nil
	}
	// Never hand the connection back to the pool: it holds the lease.
	pgConn := conn.Hijack()
	defer pgConn.Close(context.WithoutCancel(ctx)) //nolint:errcheck // closing releases the lease
	key, err := h.syncer.SpiceDB.WriteKey(ctx)
	if err != nil {
		return err
	}
	s := &watchSession{h: h, conn: pgConn, key: key, seen: map[string]time.Time{}}
	defer h.syncer.Metrics.setWatching(false)
	return s.run(ctx)
}

// watchSession is one holding of the lease.
type watchSession struct {
	h    *Healer
	conn *pgx.Conn
	key  *spicedb.WriteKey
	// cursor is the newest revision processed; saved is what Postgres has.
	cursor, saved string
	savedAt       time.Time
	// restoreSince: a restore was requested at this time for a lost store
	// or an unresumable stream; until one covering it succeeds, the cursor
	// is not saved (a process dying meanwhile leaves the old, unusable one,
	// and its successor restores again).
	restoreSince time.Time
	mode, reason string
	seen         map[string]time.Time // nonces of signed writes accepted this session
	wasOpen      bool                 // the last stream opened
	// pendingTrigger is the restore the current stream asks for once open.
	pendingTrigger string
	// lastRecv is when the current stream last delivered a message (unix
	// ns), as its reader received it: processing may lag behind.
	lastRecv atomic.Int64
}

func (s *watchSession) run(ctx context.Context) error {
	st, err := dbsqlc.New().WatchStateGet(ctx, s.conn)
	if err != nil {
		return fmt.Errorf("error reading the watch state: %w", err)
	}
	if st.Cursor != nil {
		s.cursor, s.saved = *st.Cursor, *st.Cursor
	}
	failures := 0
	for {
		s.wasOpen = false
		err := s.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errLeaseLost) {
			return err
		}
		wait := time.Duration(0)
		kind := spicedb.ClassifyWatchError(err)
		if errors.Is(err, errStoreChanged) {
			kind = spicedb.WatchSchemaMissing
		}
		switch kind {
		case spicedb.WatchUnavailable:
			// SpiceDB v1.56 does not even register its Watch service when the
			// datastore cannot watch: say what the usual cause is.
			reason := "SpiceDB's Watch API is unavailable (on its Postgres datastore it needs track_commit_timestamp = on): " + spicedb.ScrubError(err)
			s.h.warnOnce(ctx, "watch-unavailable", "SpiceDB Watch is unavailable: foreign changes to SpiceDB are repaired only by the periodic reconcile (TETHER_RECONCILE_INTERVAL)",
				"reason", reason)
			if err := s.setMode(ctx, WatchModePeriodic, reason); err != nil {
				return err
			}
			wait = s.h.cfg.WatchUnavailableRetry
		case spicedb.WatchUnresumable:
			s.h.syncer.Logger.InfoContext(ctx, "SpiceDB watch cannot resume from the last processed revision; restoring everything", "error", spicedb.ScrubError(err))
			s.cursor = ""
		case spicedb.WatchSchemaMissing: // checked and written back on reconnect
		default:
			if s.wasOpen { // it broke after working: reconnect at once
				failures = 0
			}
			failures++
			if err := s.setMode(ctx, WatchModeReconnecting, spicedb.ScrubError(err)); err != nil {
				return err
			}
			wait = Backoff(failures, 2*time.Second)
		}
		if err := s.sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// sleep waits d, keeping the lease alive.
func (s *watchSession) sleep(ctx context.Context, d time.Duration) error {
	end := time.Now().Add(d)
	for {
		left := time.Until(end)
		if left <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(left, heartbeatInterval)):
		}
		if err := s.heartbeat(ctx); err != nil {
			return err
		}
	}
}

var errStoreChanged = errors.New("SpiceDB's schema changed")

type received struct {
	msg *spicedb.WatchMessage
	at  time.Time
}

// stream (re)connects and processes the stream until it fails.
func (s *watchSession) stream(ctx context.Context) error {
	trigger, head, err := s.checkStore(ctx)
	if err != nil {
		return err
	}
	start := s.cursor
	if trigger == "" && s.cursor == "" {
		trigger = TriggerWatchResume
	}
	if trigger != "" {
		// Start from now and restore everything before: the restore reads
		// after this revision, the stream everything after it.
		start = head
		s.restoreSince = time.Now()
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := s.h.syncer.SpiceDB.Watch(sctx, start)
	if err != nil {
		return err
	}
	msgs, errc := make(chan received, 32), make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			msg, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			s.lastRecv.Store(time.Now().UnixNano())
			select {
			case msgs <- received{msg, time.Now()}:
			case <-sctx.Done():
				return
			}
		}
	}()
	defer func() { cancel(); <-done }()
	if trigger == TriggerWatchStore {
		s.h.RequestRestore(trigger) // lost whether or not the stream works
	}
	s.pendingTrigger = trigger
	return s.process(ctx, msgs, errc)
}

func (s *watchSession) process(ctx context.Context, msgs <-chan received, errc <-chan error) error {
	ticker := time.NewTicker(heartbeatInterval)
	defer ticker.Stop()
	opened := false
	started := time.Now()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			if opened {
				s.h.syncer.Metrics.setWatching(false)
			}
			return fmt.Errorf("SpiceDB watch stream ended: %w", err)
		case <-ticker.C:
			if !opened { // no error within a heartbeat: the stream is open
				opened = true
				if err := s.opened(ctx); err != nil {
					return err
				}
			}
			if err := s.heartbeat(ctx); err != nil {
				return err
			}
			if err := s.checkSilence(started); err != nil {
				return err
			}
		case m := <-msgs:
			if !opened {
				opened = true
				if err := s.opened(ctx); err != nil {
					return err
				}
			}
			s.h.syncer.Metrics.setProcessing(m.at)
			err := s.handle(ctx, m.msg)
			s.h.syncer.Metrics.setProcessing(time.Time{})
			if err != nil {
				return err
			}
		}
	}
}

// errWatchSilent: the stream delivered nothing after a write it must
// deliver (see HealConfig.WatchSilence).
var errWatchSilent = errors.New("the SpiceDB watch stream went silent")

// checkSilence fails a stream that has delivered nothing (no change, no
// checkpoint) since a write this process made after the stream started,
// once WatchSilence has passed since that write: a live stream delivers it
// within milliseconds.
func (s *watchSession) checkSilence(started time.Time) error {
	touched := s.h.syncer.SpiceDB.LastTouch()
	if touched.Before(started) || time.Unix(0, s.lastRecv.Load()).After(touched) || time.Since(touched) < s.h.cfg.WatchSilence {
		return nil
	}
	s.h.syncer.Metrics.observeWatchSilent()
	return fmt.Errorf("%w: nothing since a write %s ago", errWatchSilent, time.Since(touched).Round(time.Millisecond))
}

func (s *watchSession) opened(ctx context.Context) error {
	s.wasOpen = true
	if s.pendingTrigger == TriggerWatchResume {
		// Only now: where Watch is unavailable the periodic reconcile
		// does this work, not a restore per retry.
		s.h.RequestRestore(s.pendingTrigger)
	}
	s.h.syncer.Metrics.setWatching(true)
	return s.setMode(ctx, WatchModeWatch, "")
}

// checkStore looks at the store on every (re)connect: a missing or foreign
// schema is written back (Watch needs Tether's definitions), and a store
// without schema, or empty where Postgres has applied relationships, is
// lost: it returns a restore trigger. head is a revision to start from.
func (s *watchSession) checkStore(ctx context.Context) (trigger, head string, err error) {
	spice := s.h.syncer.SpiceDB
	state, head, err := spice.SchemaAt(ctx)
	if err != nil {
		return "", "", err
	}
	if state != spicedb.SchemaCurrent {
		written, err := spice.WriteSchemaAt(ctx)
		return TriggerWatchStore, written, err
	}
	empty, err := s.storeEmpty(ctx)
	if err != nil || !empty {
		return "", head, err
	}
	return TriggerWatchStore, head, nil
}

// storeEmpty reports whether SpiceDB holds none of Tether's relationships
// although Postgres has applied some. Postgres is read first: a relationship
// applied before that read and gone from SpiceDB after it was lost.
func (s *watchSession) storeEmpty(ctx context.Context) (bool, error) {
	applied, err := dbsqlc.New().WatchDesiredApplied(ctx, s.conn)
	if err != nil {
		return false, fmt.Errorf("%w: error reading desired relationships: %w", errLeaseLost, err)
	}
	if !applied {
		return false, nil
	}
	for _, typ := range []string{spicedb.TypeOAuth2Client, spicedb.TypeResourcePool} {
		some, err := s.h.syncer.SpiceDB.HasRelationships(ctx, typ)
		if err != nil || some {
			return false, err
		}
	}
	return true, nil
}

// setMode records the mode (and logs changes).
func (s *watchSession) setMode(ctx context.Context, mode, reason string) error {
	if mode == s.mode && reason == s.reason {
		return nil
	}
	if mode != s.mode && s.mode != "" {
		s.h.syncer.Logger.InfoContext(ctx, "SpiceDB watcher mode", "mode", mode, "was", s.mode)
	}
	var r *string
	if reason != "" {
		r = &reason
	}
	holder := s.h.cfg.Holder
	if err := dbsqlc.New().WatchModeSet(ctx, s.conn, &dbsqlc.WatchModeSetParams{Mode: mode, ModeReason: r, Holder: &holder}); err != nil {
		return fmt.Errorf("%w: %w", errLeaseLost, err)
	}
	s.mode, s.reason = mode, reason
	return nil
}

// heartbeat records progress: the cursor if it moved (and may be saved),
// else the time.
func (s *watchSession) heartbeat(ctx context.Context) error {
	holder := s.h.cfg.Holder
	q := dbsqlc.New()
	var err error
	if s.cursor != s.saved && s.maySave() {
		cursor := s.cursor
		if err = q.WatchCursorSave(ctx, s.conn, &dbsqlc.WatchCursorSaveParams{Cursor: &cursor, Holder: &holder}); err == nil {
			s.saved, s.savedAt = cursor, time.Now()
		}
	} else {
		err = q.WatchHeartbeat(ctx, s.conn, &holder)
	}
	if err != nil {
		return fmt.Errorf("%w: %w", errLeaseLost, err)
	}
	return nil
}

// maySave reports whether the cursor may be saved: no restore this session
// asked for is still to be done.
func (s *watchSession) maySave() bool {
	if s.restoreSince.IsZero() {
		return true
	}
	if !s.h.restoredSince(s.restoreSince) {
		return false
	}
	s.restoreSince = time.Time{}
	return true
}
