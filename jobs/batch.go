package jobs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/tetherhq/tether/db/dbsqlc"
	"github.com/tetherhq/tether/jobs/spicedb"
)

// Batcher group-commits the small writes of concurrent sync jobs: each
// flusher takes every request already waiting (it never waits for more, so
// a lone write goes out at once), merges them into one WriteRelationships
// call of at most spicedb.MaxUpdatesPerWrite updates, then fences all their keys in
// one UPDATE, and hands each job its result. SpiceDB takes about 1,800
// single writes a second on a small machine but over ten times as many
// updates in large batches; one fence per batch instead of one per job
// saves a Postgres commit per job.
//
// A relationship and a key appear at most once per call (SpiceDB refuses a
// request that names a relationship twice): a request that would repeat one
// waits for the next call. Concurrent calls are safe for correctness because
// every job's key is still fenced on the generation the job read, after the
// write that carried its updates returned, and sorted updates keep SpiceDB's
// row locks deadlock-free.
type Batcher struct {
	spice  *spicedb.Client
	tracer trace.Tracer // nil: tracing is off
	db     *pgxpool.Pool
	queue  chan *batchRequest
	stop   chan struct{}
	closed chan struct{}
	wg     sync.WaitGroup
}

type batchRequest struct {
	ctx     context.Context
	key     keyAt
	updates []spicedb.Update
	done    chan applyResult
}

// keyAt is a key at the generation its job read.
type keyAt struct {
	syncKey
	generation int64
	// outboxJob, from a hand-off, is the key's job, deleted by the fence.
	outboxJob int64
}

// applyResult is what a job learns of its write and fence.
type applyResult struct {
	token     string
	writtenAt time.Time // when SpiceDB acknowledged the write
	writeTook time.Duration
	fenced    bool
	writeErr  error // the SpiceDB write failed: nothing was fenced
	fenceErr  error // the write landed but recording it failed
	// batchSpan is the span of the shared write, which the job's trace
	// links to (invalid when tracing is off or the job wrote alone).
	batchSpan trace.SpanContext
}

// NewBatcher starts flushers goroutines writing through spice and fencing
// in db. tp, if not nil, traces each shared write: a span of its own trace
// (it belongs to no single job) that links to every job it carries, while
// each job's trace gets a span that links back to it. Close it.
func NewBatcher(spice *spicedb.Client, db *pgxpool.Pool, flushers int, tp trace.TracerProvider) *Batcher {
	b := &Batcher{spice: spice, db: db, queue: make(chan *batchRequest, 4096), stop: make(chan struct{}), closed: make(chan struct{})}
	for range max(flushers, 1) {
		b.wg.Add(1)
		go b.flush()
	}
	if tp != nil {
		b.tracer = tp.Tracer("github.com/tetherhq/tether/jobs")
	}
	return b
}

// Close stops the flushers after the requests already taken are written.
func (b *Batcher) Close() {
	close(b.stop)
	b.wg.Wait()
	close(b.closed)
}

// Apply writes key's updates as part of some batch and fences key. Writes
// too large to share a call go out alone.
func (b *Batcher) Apply(ctx context.Context, key keyAt, updates []spicedb.Update) (res applyResult) {
	updates = spicedb.NormalizeUpdates(updates)
	if len(updates) == 0 || len(updates) > spicedb.MaxUpdatesPerWrite/4 {
		return applyAlone(ctx, b.spice, b.db, key, updates)
	}
	if b.tracer != nil {
		var span trace.Span
		ctx, span = b.tracer.Start(ctx, "tether.apply_batched", trace.WithAttributes(attribute.Int("tether.updates", len(updates))))
		defer func() {
			if res.batchSpan.IsValid() {
				span.AddLink(trace.Link{SpanContext: res.batchSpan})
			}
			span.End()
		}()
	}
	req := &batchRequest{ctx: ctx, key: key, updates: updates, done: make(chan applyResult, 1)}
	select {
	case b.queue <- req:
	case <-ctx.Done():
		return applyResult{writeErr: ctx.Err()}
	case <-b.stop:
		return applyAlone(ctx, b.spice, b.db, key, updates)
	}
	// Wait for the answer even if ctx ends: a flusher that took the request
	// cancels its call when any of its jobs' contexts ends, so it answers
	// promptly.
	// Returning earlier would let this job retry, write newer state and
	// fence while its old write is still in flight — and lands last.
	select {
	case res := <-req.done:
		return res
	case <-b.closed:
		return applyResult{writeErr: errors.New("SpiceDB write batcher closed")}
	}
}

// applyAlone writes updates in their own call, then fences key alone.
func applyAlone(ctx context.Context, spice *spicedb.Client, db *pgxpool.Pool, key keyAt, updates []spicedb.Update) applyResult {
	started := time.Now()
	token, err := spice.Write(ctx, updates)
	res := applyResult{token: token, writtenAt: time.Now(), writeErr: err}
	res.writeTook = res.writtenAt.Sub(started)
	if err != nil {
		return res
	}
	res.fenced, res.fenceErr = fence(ctx, db, key, token)
	return res
}

func (b *Batcher) flush() {
	defer b.wg.Done()
	var held *batchRequest // taken but deferred to the next call
	for {
		first := held
		held = nil
		if first == nil {
			select {
			case first = <-b.queue:
			case <-b.stop:
				return
			}
		}
		batch := []*batchRequest{first}
		seen := make(map[spicedb.Relationship]bool, len(first.updates))
		keys := map[syncKey]bool{}
		n := 0
		add := func(r *batchRequest) {
			for _, u := range r.updates {
				seen[u.Relationship] = true
			}
			keys[r.key.syncKey] = true
			n += len(r.updates)
		}
		add(first)
	drain:
		for n < spicedb.MaxUpdatesPerWrite {
			select {
			case r := <-b.queue:
				if n+len(r.updates) > spicedb.MaxUpdatesPerWrite || repeats(seen, r.updates) || keys[r.key.syncKey] {
					held = r
					break drain
				}
				batch = append(batch, r)
				add(r)
			default:
				break drain
			}
		}
		b.write(batch)
	}
}

func repeats(seen map[spicedb.Relationship]bool, updates []spicedb.Update) bool {
	for _, u := range updates {
		if seen[u.Relationship] {
			return true
		}
	}
	return false
}

func (b *Batcher) write(batch []*batchRequest) {
	// Drop requests whose job gave up already; write with the earliest
	// deadline among the rest.
	live := batch[:0]
	var all []spicedb.Update
	for _, r := range batch {
		if r.ctx.Err() != nil {
			r.done <- applyResult{writeErr: r.ctx.Err()}
			continue
		}
		live = append(live, r)
		all = append(all, r.updates...)
	}
	if len(live) == 0 {
		return
	}
	timeout := writeTimeout(live)
	traced, span := b.startBatchSpan(live, len(all))
	defer span.End()
	ctx, cancel := context.WithTimeout(traced, timeout)
	defer cancel()
	// Any job giving up (timeout, shutdown) cancels the call it shares: its
	// Write waits for this call, and must return promptly.
	for _, r := range live {
		stop := context.AfterFunc(r.ctx, cancel)
		defer stop()
	}
	started := time.Now()
	token, err := b.spice.Write(ctx, all)
	res := applyResult{token: token, writtenAt: time.Now(), writeErr: err, batchSpan: span.SpanContext()}
	res.writeTook = res.writtenAt.Sub(started)
	if err != nil {
		span.SetStatus(codes.Error, "the SpiceDB write failed")
		for _, r := range live {
			r.done <- res
		}
		return
	}
	// The write landed: fence even if a job gave up meanwhile (the fence is
	// short, and a landed write should be recorded).
	fenceCtx, cancelFence := context.WithTimeout(traced, min(timeout, fenceTimeout))
	defer cancelFence()
	keys := make([]keyAt, len(live))
	for i, r := range live {
		keys[i] = r.key
	}
	fenced, err := fenceKeys(fenceCtx, b.db, keys, token)
	if err != nil {
		span.SetStatus(codes.Error, "recording the applied generations failed")
	}
	for _, r := range live {
		res := res
		res.fenceErr = err
		res.fenced = err == nil && (r.key.generation == 0 || fenced[r.key.syncKey])
		r.done <- res
	}
}

// startBatchSpan starts the span of one shared write, linked to the span of
// every job in it; without tracing it returns a no-op span.
func (b *Batcher) startBatchSpan(live []*batchRequest, updates int) (context.Context, trace.Span) {
	ctx := context.Background()
	if b.tracer == nil {
		return ctx, trace.SpanFromContext(ctx)
	}
	links := make([]trace.Link, 0, len(live))
	for _, r := range live {
		if l := trace.LinkFromContext(r.ctx); l.SpanContext.IsValid() {
			links = append(links, l)
		}
	}
	return b.tracer.Start(ctx, "tether.spicedb_write_batch", trace.WithNewRoot(), trace.WithLinks(links...),
		trace.WithAttributes(attribute.Int("tether.batch.jobs", len(live)), attribute.Int("tether.updates", updates)))
}

// fenceTimeout bounds a batch's fence (one short UPDATE).
const fenceTimeout = 10 * time.Second

// fenceKeys fences keys in one statement and returns those fenced. Keys
// without sync state (generation 0) have nothing to fence.
func fenceKeys(ctx context.Context, db *pgxpool.Pool, keys []keyAt, token string) (map[syncKey]bool, error) {
	var kinds, keyIDs []string
	var generations, outbox []int64
	for _, k := range keys {
		if k.generation != 0 {
			kinds, keyIDs, generations = append(kinds, k.kind), append(keyIDs, k.keyID), append(generations, k.generation)
			outbox = append(outbox, k.outboxJob)
		}
	}
	if len(kinds) == 0 {
		return nil, nil
	}
	rows, err := dbsqlc.New().SyncFenceMany(ctx, db, &dbsqlc.SyncFenceManyParams{
		Zedtoken: &token, Kinds: kinds, KeyIds: keyIDs, Generations: generations, OutboxJobs: outbox,
	})
	if err != nil {
		return nil, fmt.Errorf("error recording applied generations: %w", err)
	}
	fenced := make(map[syncKey]bool, len(rows))
	for _, row := range rows {
		fenced[syncKey{row.Kind, row.KeyID}] = true
	}
	return fenced, nil
}

// defaultWriteTimeout bounds a batched write whose jobs set no deadline.
const defaultWriteTimeout = 30 * time.Second

func writeTimeout(batch []*batchRequest) time.Duration {
	d := defaultWriteTimeout
	for _, r := range batch {
		if dl, ok := r.ctx.Deadline(); ok {
			d = min(d, time.Until(dl))
		}
	}
	return d
}
