package jobs

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/tetherhq/tether/jobs/spicedb"
)

// HandOffConfig configures the in-process hand-off of committed changes.
type HandOffConfig struct {
	// Grace is how far ahead a handed-off change's job is scheduled: the
	// job stays the durable outbox and runs then, applying the change if
	// the hand-off did not (the process died after the commit, or the
	// write failed). A hand-off's writes must land within half of it.
	// 0 turns the hand-off off: jobs are inserted available, as from an
	// API-only process.
	Grace time.Duration
	// Slots bounds the hand-offs in flight; a change committed while all
	// are taken is left to its job, inserted available (0: 128).
	Slots int
	// Drop, if set, loses a hand-off after its commit, as a process dying
	// between the two would (a fault tests inject).
	Drop func(kind, keyID string) bool
}

// handOff applies a committed change in the process that committed it, right
// after the commit, instead of waiting for River to notice, fetch and start its
// job. Its job was inserted in the same transaction, scheduled Grace ahead:
// when it runs it finds the key applied and does nothing, or applies the
// change itself. The hand-off's writes are bounded to land within Grace/2 of
// the commit, so none can land once the job may run: a stale write landing
// last is what the fence prevents, and only a writer still alive to go round
// again can be fenced.
type handOff struct {
	syncer *Syncer
	river  *river.Client[pgx.Tx]
	cfg    HandOffConfig
	slots  chan struct{}
	wg     sync.WaitGroup
	ctx    context.Context
	stop   context.CancelFunc
}

func newHandOff(syncer *Syncer, client *river.Client[pgx.Tx], cfg HandOffConfig) *handOff {
	if cfg.Slots <= 0 {
		cfg.Slots = 128
	}
	ctx, stop := context.WithCancel(context.Background())
	return &handOff{syncer: syncer, river: client, cfg: cfg, slots: make(chan struct{}, cfg.Slots), ctx: ctx, stop: stop}
}

// handOffKey is a key to apply after the commit, with what its plan needs.
type handOffKey struct {
	kind, keyID        string
	providerID, userID string // a connection key
	poolID             int64  // a pool key
	jobID              int64  // its job, the outbox (set once inserted)
}

// HandOffBatch collects the keys one transaction changes, to hand them off
// once it has committed. A nil batch (no hand-off in this process) hands
// nothing off.
type HandOffBatch struct {
	h    *handOff
	mu   sync.Mutex
	keys []*handOffKey // each holds a slot
}

type handOffBatchKey struct{}

// BeginHandOff returns ctx carrying a batch for the transaction about to run
// in it: the enqueuer adds the keys it marks changed (scheduling their jobs a
// grace ahead), and Committed hands them off. Release must follow either way.
func (e *Enqueuer) BeginHandOff(ctx context.Context) (context.Context, *HandOffBatch) {
	if e.handOff == nil {
		return ctx, nil
	}
	b := &HandOffBatch{h: e.handOff}
	return context.WithValue(ctx, handOffBatchKey{}, b), b
}

// reserve takes a slot for one more key and returns it with when its job is
// to run, or nil and zero when the key is left to its job (no batch in ctx,
// or every slot taken). The caller records the job's id in it.
func reserve(ctx context.Context, k handOffKey) (*handOffKey, time.Time) {
	b, _ := ctx.Value(handOffBatchKey{}).(*HandOffBatch)
	if b == nil {
		return nil, time.Time{}
	}
	select {
	case b.h.slots <- struct{}{}:
	default:
		return nil, time.Time{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.keys = append(b.keys, &k)
	return &k, time.Now().Add(b.h.cfg.Grace)
}

// setJob records the key's job, inserted scheduled (nil k: not handed off).
func (k *handOffKey) setJob(res *rivertype.JobInsertResult) {
	if k != nil {
		k.jobID = res.Job.ID
	}
}

// Committed hands the batch's keys off: its transaction has committed.
func (b *HandOffBatch) Committed() {
	if b == nil {
		return
	}
	b.mu.Lock()
	keys := b.keys
	b.keys = nil
	b.mu.Unlock()
	deadline := time.Now().Add(b.h.cfg.Grace / 2)
	for _, k := range keys {
		b.h.wg.Add(1)
		go b.h.apply(k, deadline)
	}
}

// Release frees the slots of keys not handed off (the transaction rolled
// back: their jobs never existed).
func (b *HandOffBatch) Release() {
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for range b.keys {
		<-b.h.slots
	}
	b.keys = nil
}

// apply applies one key as its job would, bounded by deadline. Failure is
// no one's error: the job runs at its scheduled time and applies it.
func (h *handOff) apply(k *handOffKey, deadline time.Time) {
	defer h.wg.Done()
	defer func() { <-h.slots }()
	s := h.syncer
	if h.cfg.Drop != nil && h.cfg.Drop(k.kind, k.keyID) {
		s.Metrics.observeHandOff("dropped")
		return
	}
	ctx, cancel := context.WithDeadline(h.ctx, deadline)
	defer cancel()
	plan := s.connectionPlan(k.providerID, k.userID)
	if k.kind == KeyKindPool {
		plan = s.poolPlan(k.poolID)
	}
	// Like a job's first attempt, it writes nothing if the key is applied
	// already; a fence that records its change applied deletes its job.
	err := runFenced(ctx, s, syncRun{kind: k.kind, keyID: k.keyID, outboxJob: k.jobID, fail: func(err error) error { return err }}, plan)
	if err == nil {
		s.Metrics.observeHandOff("applied")
		return
	}
	s.Metrics.observeHandOff("left_to_job")
	s.Logger.DebugContext(ctx, "hand-off not applied; its job will", "kind", k.kind, "key", k.keyID, "error", spicedb.ScrubError(err))
	if ctx.Err() != nil || k.jobID == 0 {
		// Out of time: the job waits for its scheduled time, so that nothing
		// this hand-off sent can land after the job started.
		return
	}
	// The write or the plan failed and returned: nothing of this hand-off is
	// in flight any more, so its job may start now rather than at its time.
	if _, err := h.river.JobRetry(h.ctx, k.jobID); err != nil {
		s.Logger.DebugContext(h.ctx, "hand-off's job not made available; it runs at its time", "kind", k.kind, "key", k.keyID, "error", spicedb.ScrubError(err))
	}
}

// close waits for the hand-offs in flight (each bounded by its deadline),
// cancelling them if ctx ends first; their jobs apply what they did not.
func (h *handOff) close(ctx context.Context) {
	done := make(chan struct{})
	go func() { h.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	h.stop() // cancels the hand-offs still running, if any
	<-done
}

// CloseHandOffs waits for this process's hand-offs in flight; the engine calls
// it once no more requests commit, before the batcher closes.
func (e *Enqueuer) CloseHandOffs(ctx context.Context) {
	if e.handOff != nil {
		e.handOff.close(ctx)
	}
}
