package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/internal/keyring"
	"github.com/tetherhq/tether/internal/oauthclient"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// Job priorities: revocations never wait behind grants (River fetches by
// priority first).
const (
	PriorityRevoke = 1
	PriorityGrant  = 2
)

// maxSyncAttempts is effectively unlimited: a transient SpiceDB outage must
// never exhaust a sync job. Permanent errors cancel the job instead.
const maxSyncAttempts = 100_000

// SyncConnectionArgs names the sync key of one user's connection to one
// provider. Ids only: never a token or a secret.
type SyncConnectionArgs struct {
	ProviderID string `json:"provider_id"`
	UserID     string `json:"user_id"`
	// Repair lists the relations of foreign changes the watcher saw on the
	// key (one entry per change): the job then always writes, even if the
	// key is settled, and counts them repaired.
	Repair []string `json:"repair,omitempty"`
	// HandedOff: the change was handed off after its commit, and this job
	// runs only because the hand-off did not record it applied. The
	// hand-off may have written (a write that landed but answered with an
	// error, or one that landed after another writer fenced a newer state),
	// so the job always writes, like a retry.
	HandedOff bool `json:"handed_off,omitempty"`
}

func (SyncConnectionArgs) Kind() string { return "tether.sync_connection" }

func (SyncConnectionArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: maxSyncAttempts, Priority: PriorityGrant}
}

// SyncPoolArgs names the sync key of one resource pool.
type SyncPoolArgs struct {
	ResourcePoolID int64    `json:"resource_pool_id"`
	Repair         []string `json:"repair,omitempty"`     // as in SyncConnectionArgs
	HandedOff      bool     `json:"handed_off,omitempty"` // as in SyncConnectionArgs
}

func (SyncPoolArgs) Kind() string { return "tether.sync_pool" }

func (SyncPoolArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: maxSyncAttempts, Priority: PriorityGrant}
}

// Backoff is the retry delay after attempt n (1-based): 100 ms doubling up to
// max, with jitter over the upper half so that retries after an outage do not
// arrive in lockstep.
func Backoff(attempt int, max time.Duration) time.Duration {
	d := 100 * time.Millisecond
	for i := 1; i < attempt && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return d/2 + rand.N(d/2+1)
}

// Enqueuer marks sync keys as changed and inserts their jobs, inside the
// caller's transaction (the transactional outbox).
type Enqueuer struct {
	River *river.Client[pgx.Tx]
	// handOff, if set, applies changes committed in this process right after
	// their commit (see BeginHandOff).
	handOff *handOff
}

// Connection marks the connection key (providerID, userID) changed. revoke
// says the change may remove access, which puts its job ahead of grants.
func (e *Enqueuer) Connection(ctx context.Context, tx pgx.Tx, providerID, userID string, revoke bool) error {
	return e.Connections(ctx, tx, providerID, []string{userID}, revoke)
}

// Connections marks several connection keys of one provider changed.
func (e *Enqueuer) Connections(ctx context.Context, tx pgx.Tx, providerID string, userIDs []string, revoke bool) error {
	if len(userIDs) == 0 {
		return nil
	}
	q := dbsqlc.New()
	if len(userIDs) == 1 { // the common case: one InsertTx is cheaper than a batch
		userID := userIDs[0]
		if _, err := q.SyncBump(ctx, tx, &dbsqlc.SyncBumpParams{
			Kind: KeyKindConnection, KeyID: ConnectionKeyID(providerID, userID),
			ProviderID: &providerID, UserID: &userID, Revoke: revoke,
		}); err != nil {
			return fmt.Errorf("error marking connection key changed: %w", err)
		}
		handOff, at := reserve(ctx, handOffKey{kind: KeyKindConnection, keyID: ConnectionKeyID(providerID, userID), providerID: providerID, userID: userID})
		res, err := e.River.InsertTx(ctx, tx, SyncConnectionArgs{ProviderID: providerID, UserID: userID, HandedOff: handOff != nil},
			&river.InsertOpts{Priority: priority(revoke), ScheduledAt: at})
		if err != nil {
			return fmt.Errorf("error inserting connection sync job: %w", err)
		}
		handOff.setJob(res)
		return nil
	}
	params := make([]river.InsertManyParams, 0, len(userIDs))
	handOffs := make([]*handOffKey, 0, len(userIDs))
	for _, userID := range userIDs {
		if _, err := q.SyncBump(ctx, tx, &dbsqlc.SyncBumpParams{
			Kind: KeyKindConnection, KeyID: ConnectionKeyID(providerID, userID),
			ProviderID: &providerID, UserID: &userID, Revoke: revoke,
		}); err != nil {
			return fmt.Errorf("error marking connection key changed: %w", err)
		}
		handOff, at := reserve(ctx, handOffKey{kind: KeyKindConnection, keyID: ConnectionKeyID(providerID, userID), providerID: providerID, userID: userID})
		handOffs = append(handOffs, handOff)
		params = append(params, river.InsertManyParams{
			Args:       SyncConnectionArgs{ProviderID: providerID, UserID: userID, HandedOff: handOff != nil},
			InsertOpts: &river.InsertOpts{Priority: priority(revoke), ScheduledAt: at},
		})
	}
	results, err := e.River.InsertManyTx(ctx, tx, params)
	if err != nil {
		return fmt.Errorf("error inserting connection sync jobs: %w", err)
	}
	for i, res := range results { // in the order of params
		handOffs[i].setJob(res)
	}
	return nil
}

// Pool marks the pool key changed.
func (e *Enqueuer) Pool(ctx context.Context, tx pgx.Tx, poolID int64, revoke bool) error {
	keyID := fmt.Sprint(poolID)
	if _, err := dbsqlc.New().SyncBump(ctx, tx, &dbsqlc.SyncBumpParams{
		Kind: KeyKindPool, KeyID: keyID, ResourcePoolID: &poolID, Revoke: revoke,
	}); err != nil {
		return fmt.Errorf("error marking pool key changed: %w", err)
	}
	handOff, at := reserve(ctx, handOffKey{kind: KeyKindPool, keyID: keyID, poolID: poolID})
	res, err := e.River.InsertTx(ctx, tx, SyncPoolArgs{ResourcePoolID: poolID, HandedOff: handOff != nil},
		&river.InsertOpts{Priority: priority(revoke), ScheduledAt: at})
	if err != nil {
		return fmt.Errorf("error inserting pool sync job: %w", err)
	}
	handOff.setJob(res)
	return nil
}

func priority(revoke bool) int {
	if revoke {
		return PriorityRevoke
	}
	return PriorityGrant
}

// Syncer holds what the sync workers share.
type Syncer struct {
	DB         *pgxpool.Pool
	SpiceDB    *spicedb.Client
	Logger     *slog.Logger
	MaxBackoff time.Duration
	Metrics    *Metrics
	// Keys and OAuth serve the token revocation worker.
	Keys  *keyring.Ring
	OAuth *oauthclient.Client
	// Batcher, if set, group-commits the workers' writes.
	Batcher *Batcher
	// OnApplied, if set, is called after a key's change is applied and
	// fenced, with the ZedToken of the write and when SpiceDB acknowledged
	// it (benchmarks use it).
	OnApplied func(kind, keyID, zedToken string, writtenAt time.Time)

	failures failureLog
	// healer is set by NewClient for a working client (StartHealing).
	healer *Healer
}

// SyncerDeps are what a Syncer is built from; every field but OnApplied
// is required.
type SyncerDeps struct {
	DB         *pgxpool.Pool
	SpiceDB    *spicedb.Client
	Logger     *slog.Logger
	MaxBackoff time.Duration
	Metrics    *Metrics
	Keys       *keyring.Ring
	OAuth      *oauthclient.Client
	// Batcher, if set, group-commits the workers' writes.
	Batcher *Batcher
	// OnApplied is an observer (benchmarks time the pipeline with it).
	OnApplied func(kind, keyID, zedToken string, writtenAt time.Time)
}

// NewSyncer refuses missing parts rather than leaving a worker to fail on a
// nil field at its first job.
func NewSyncer(d SyncerDeps) (*Syncer, error) {
	var missing []string
	for name, absent := range map[string]bool{
		"DB": d.DB == nil, "SpiceDB": d.SpiceDB == nil, "Logger": d.Logger == nil, "Metrics": d.Metrics == nil,
		"Keys": d.Keys == nil, "OAuth": d.OAuth == nil, "MaxBackoff": d.MaxBackoff <= 0,
	} {
		if absent {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("jobs.NewSyncer: missing %s", strings.Join(missing, ", "))
	}
	return &Syncer{DB: d.DB, SpiceDB: d.SpiceDB, Logger: d.Logger, MaxBackoff: d.MaxBackoff, Metrics: d.Metrics,
		Keys: d.Keys, OAuth: d.OAuth, Batcher: d.Batcher, OnApplied: d.OnApplied}, nil
}

// apply writes updates and fences key, group-committed when there is a
// Batcher.
func (s *Syncer) apply(ctx context.Context, key keyAt, updates []spicedb.Update) applyResult {
	if s.Batcher != nil {
		return s.Batcher.Apply(ctx, key, updates)
	}
	return applyAlone(ctx, s.SpiceDB, s.DB, key, updates)
}

// ConnectionWorker applies a connection key:
// oauth2_client:P#connected@user:U holds iff U's connection to P is connected.
type ConnectionWorker struct {
	river.WorkerDefaults[SyncConnectionArgs]
	*Syncer
}

func (w *ConnectionWorker) NextRetry(job *river.Job[SyncConnectionArgs]) time.Time {
	return w.retryAt(job.Attempt)
}

func (w *ConnectionWorker) Work(ctx context.Context, job *river.Job[SyncConnectionArgs]) error {
	args := job.Args
	keyID := ConnectionKeyID(args.ProviderID, args.UserID)
	return runFenced(ctx, w.Syncer, w.jobRun(ctx, job.JobRow, args.Repair, args.HandedOff, KeyKindConnection, keyID), w.connectionPlan(args.ProviderID, args.UserID))
}

// connectionPlan reads what a connection key's job writes:
// oauth2_client:P#connected@user:U, or its deletion.
func (s *Syncer) connectionPlan(providerID, userID string) func(context.Context) (syncPlan, error) {
	keyID := ConnectionKeyID(providerID, userID)
	rel := spicedb.Relationship{ResourceType: spicedb.TypeOAuth2Client, ResourceID: providerID, Relation: spicedb.RelConnected, SubjectType: spicedb.TypeUser, SubjectID: spicedb.SubjectID(userID)}
	return func(ctx context.Context) (syncPlan, error) {
		desired, err := dbsqlc.New().SyncConnectionDesired(ctx, s.DB, &dbsqlc.SyncConnectionDesiredParams{
			KeyID: keyID, ProviderID: providerID, UserID: userID,
		})
		if err != nil {
			return syncPlan{}, fmt.Errorf("error reading connection state: %w", err)
		}
		return syncPlan{generation: desired.Generation, changedAt: desired.ChangedAt, settled: desired.Settled,
			updates: []spicedb.Update{{Relationship: rel, Delete: !desired.Connected}}}, nil
	}
}

// PoolWorker applies a pool key: resource_pool:R#provider to its linked
// provider, #viewer@user:* when public, #viewer for each manual viewer, and
// nothing else on R.
type PoolWorker struct {
	river.WorkerDefaults[SyncPoolArgs]
	*Syncer
}

func (w *PoolWorker) NextRetry(job *river.Job[SyncPoolArgs]) time.Time {
	return w.retryAt(job.Attempt)
}

// retryAt is when a sync job that failed its attempt runs again: after its
// backoff, or — while this process's healer probes SpiceDB and finds it out
// of reach — after outageRetry. The healer makes every waiting job available
// the moment SpiceDB answers (and a process starting does too), so retries
// on the backoff meanwhile only churn river_job and sync_state: a 60 s
// outage left 115,000 dead river_job rows behind 6,000 jobs, and the drain
// after it ran at half the speed of the same backlog on clean tables.
func (s *Syncer) retryAt(attempt int) time.Time {
	if s.healer != nil && s.healer.down.Load() {
		return time.Now().Add(outageRetry)
	}
	return time.Now().Add(Backoff(attempt, s.MaxBackoff))
}

func (w *PoolWorker) Work(ctx context.Context, job *river.Job[SyncPoolArgs]) error {
	poolID := job.Args.ResourcePoolID
	resourceID := fmt.Sprint(poolID)
	return runFenced(ctx, w.Syncer, w.jobRun(ctx, job.JobRow, job.Args.Repair, job.Args.HandedOff, KeyKindPool, resourceID), w.poolPlan(poolID))
}

// poolPlan reads what a pool key's job writes: the pool's desired
// relationships from Postgres, and the deletion of any other SpiceDB holds
// on it.
func (s *Syncer) poolPlan(poolID int64) func(context.Context) (syncPlan, error) {
	resourceID := fmt.Sprint(poolID)
	return func(ctx context.Context) (syncPlan, error) {
		desired, err := dbsqlc.New().SyncPoolDesired(ctx, s.DB, &dbsqlc.SyncPoolDesiredParams{KeyID: resourceID, ResourcePoolID: poolID})
		if err != nil {
			return syncPlan{}, fmt.Errorf("error reading pool state: %w", err)
		}
		want := map[spicedb.Relationship]bool{}
		if desired.PoolExists {
			if desired.RemoteProviderID != nil {
				want[spicedb.Relationship{ResourceType: spicedb.TypeResourcePool, ResourceID: resourceID, Relation: spicedb.RelProvider, SubjectType: spicedb.TypeOAuth2Client, SubjectID: *desired.RemoteProviderID}] = true
			}
			if desired.Public {
				want[spicedb.Relationship{ResourceType: spicedb.TypeResourcePool, ResourceID: resourceID, Relation: spicedb.RelViewer, SubjectType: spicedb.TypeUser, SubjectID: spicedb.Wildcard}] = true
			}
			for _, subject := range desired.ViewerSubjectIds {
				want[spicedb.Relationship{ResourceType: spicedb.TypeResourcePool, ResourceID: resourceID, Relation: spicedb.RelViewer, SubjectType: spicedb.TypeUser, SubjectID: subject}] = true
			}
		}
		actual, err := s.SpiceDB.ReadResource(ctx, spicedb.TypeResourcePool, resourceID)
		if err != nil {
			return syncPlan{}, err
		}
		updates := make([]spicedb.Update, 0, len(want))
		for rel := range want {
			updates = append(updates, spicedb.Update{Relationship: rel})
		}
		for _, rel := range actual {
			if !want[rel] {
				updates = append(updates, spicedb.Update{Relationship: rel, Delete: true})
			}
		}
		return syncPlan{generation: desired.Generation, changedAt: desired.ChangedAt, settled: desired.Settled, updates: updates}, nil
	}
}

// syncPlan is what a key's job writes, read in one snapshot with the key's
// generation and the time of its newest change.
type syncPlan struct {
	generation int64
	changedAt  time.Time
	// settled: every committed change of the key is applied already.
	settled bool
	updates []spicedb.Update
}

// syncRun is one application of a key: by its job or by a hand-off.
type syncRun struct {
	kind, keyID string
	// mustWrite: write even if the key looks settled (see mustWrite; and
	// repairs: SpiceDB was changed behind the key's back).
	mustWrite bool
	repair    []string
	// outboxJob is a hand-off's job, deleted with the fence that records
	// its change applied (0: none).
	outboxJob int64
	// fail turns a failed plan or write into the result (a job records it
	// on the key; a hand-off leaves the change to its job).
	fail func(error) error
}

// jobRun is the run of a sync job.
func (s *Syncer) jobRun(ctx context.Context, job *rivertype.JobRow, repair []string, handedOff bool, kind, keyID string) syncRun {
	return syncRun{kind: kind, keyID: keyID, mustWrite: mustWrite(job) || len(repair) > 0 || handedOff, repair: repair,
		fail: func(err error) error { return s.failed(ctx, kind, keyID, job.Attempt, err) }}
}

// mustWrite says a job may have written before (a retry, a rescued job, or
// the replacement of one taken over from a dead worker), so it writes even if
// its key looks settled.
func mustWrite(job *rivertype.JobRow) bool {
	return job.Attempt > 1 || reclaimed(job)
}

// runFenced is the heart of the sync: read the key's desired relationships and
// generation (one snapshot), write them, then record the generation as
// applied only if it is still the key's generation. If the key changed meanwhile, another job may already
// have written the newer state before this job's write landed, so go round
// again: the last write for a key is always made from its newest state.
func runFenced(ctx context.Context, s *Syncer, run syncRun, plan func(ctx context.Context) (syncPlan, error)) error {
	kind, keyID, wrote, fail := run.kind, run.keyID, run.mustWrite, run.fail
	for round := 0; ; round++ {
		p, err := plan(ctx)
		if err == nil && p.settled && !wrote && round == 0 {
			// Another job applied this key's newest state (this job's change
			// included) and fenced it. A first attempt has written nothing that
			// could be stale, so there is nothing to do. (Retries, rescued jobs
			// and replacements of jobs taken over from dead workers may have:
			// they always write. So do repairs: SpiceDB was changed behind
			// the key's back.)
			return nil
		}
		if err != nil {
			return fail(err)
		}
		// Bounded by this process's worker lease: no write of a job that
		// another worker may take over lands after the takeover.
		writeCtx, cancel, err := leaseWriteContext(ctx)
		if err != nil {
			return fail(err)
		}
		res := s.apply(writeCtx, keyAt{syncKey: syncKey{kind, keyID}, generation: p.generation, outboxJob: run.outboxJob}, p.updates)
		cancel()
		s.Metrics.observeWrite(res.writeTook, res.writeErr)
		if res.writeErr != nil {
			return fail(res.writeErr)
		}
		if res.fenceErr != nil {
			return res.fenceErr
		}
		if res.fenced {
			s.Metrics.observeApplied(kind, round, p.changedAt)
			s.Metrics.observeRepaired(run.repair)
			if s.OnApplied != nil {
				s.OnApplied(kind, keyID, res.token, res.writtenAt)
			}
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if round+1 >= maxFenceRounds {
			// The key keeps changing faster than a round takes (one pool under
			// a stream of grants). Retry later instead of chasing it: the retry
			// (attempt > 1) always rewrites the newest state, so a write of
			// this attempt that landed late cannot stay last.
			s.Metrics.observeFenceRetries(round + 1)
			return errKeyContended
		}
	}
}

// maxFenceRounds bounds how often a job rewrites a key that keeps changing
// before it retries later.
const maxFenceRounds = 3

var errKeyContended = errors.New("the key kept changing while its job wrote; retrying")

// fence records key's generation as applied unless the key changed
// meanwhile, or a transaction holds its row: see SyncFenceMany. It is one
// autocommit UPDATE: River completes the job afterwards (batched). If the
// process dies between the two, the job runs again, which is harmless.
func fence(ctx context.Context, db *pgxpool.Pool, key keyAt, token string) (bool, error) {
	if key.generation == 0 { // the key has no sync state (never changed through Tether): nothing to fence
		return true, nil
	}
	fenced, err := fenceKeys(ctx, db, []keyAt{key}, token)
	return fenced[key.syncKey], err
}

// failed records a failed attempt on the key (for the API's sync status) and
// decides between retry (transient) and cancel (permanent: the reconciler
// picks stalled keys up again).
func (s *Syncer) failed(ctx context.Context, kind, keyID string, attempt int, err error) error {
	// An interrupted job (shutdown, timeout) is never a permanent failure,
	// whatever error the interrupted call returned.
	// Nor is a store without Tether's schema (wiped, replaced): the write
	// reported it to the healer, which writes the schema back, restores
	// everything and reschedules this job; until then it retries like any
	// other outage.
	transient := spicedb.IsTransient(err) || errors.Is(err, context.Canceled) || errors.Is(err, ErrWorkerLeaseLost) || ctx.Err() != nil ||
		spicedb.IsSchemaMissing(err)
	s.Metrics.observeFailure(kind, transient)
	s.logFailure(ctx, kind, keyID, attempt, transient, err)
	msg := spicedb.ScrubError(err)
	// A detached context: the job's context may be what just ended.
	recordCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if recErr := dbsqlc.New().SyncRecordError(recordCtx, s.DB, &dbsqlc.SyncRecordErrorParams{
		Kind: kind, KeyID: keyID, LastError: &msg, Stalled: !transient,
	}); recErr != nil {
		s.Logger.WarnContext(ctx, "error recording sync failure", "kind", kind, "error", recErr)
	}
	if transient {
		return err
	}
	return river.JobCancel(err)
}
