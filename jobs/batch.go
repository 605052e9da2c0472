package jobs

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Batcher group-commits the small writes of concurrent sync jobs: each
// flusher takes every request already waiting (it never waits for more, so
// a lone write goes out at once), merges them into one WriteRelationships
// call of at most MaxUpdatesPerWrite updates, and hands the call's result
// to all of them. SpiceDB takes about 1,800 single writes a second on a
// small machine but over ten times as many updates in large batches.
//
// A relationship appears at most once per call (SpiceDB refuses a request
// that names one twice): a request that would repeat one waits for the next
// call. Concurrent calls are safe for correctness because every job still
// fences on its key's generation after its write returns, however it was
// batched, and sorted updates keep SpiceDB's row locks deadlock-free.
type Batcher struct {
	spice  *SpiceDB
	queue  chan *batchRequest
	stop   chan struct{}
	closed chan struct{}
	wg     sync.WaitGroup
}

type batchRequest struct {
	ctx     context.Context
	updates []Update
	done    chan batchResult
}

type batchResult struct {
	token string
	err   error
}

// NewBatcher starts flushers goroutines writing through spice. Close it.
func NewBatcher(spice *SpiceDB, flushers int) *Batcher {
	b := &Batcher{spice: spice, queue: make(chan *batchRequest, 4096), stop: make(chan struct{}), closed: make(chan struct{})}
	for range max(flushers, 1) {
		b.wg.Add(1)
		go b.flush()
	}
	return b
}

// Close stops the flushers after the requests already taken are written.
func (b *Batcher) Close() {
	close(b.stop)
	b.wg.Wait()
	close(b.closed)
}

// Write applies updates as part of some batch and returns that batch's
// ZedToken. Writes too large to share a call go out alone.
func (b *Batcher) Write(ctx context.Context, updates []Update) (string, error) {
	updates = normalizeUpdates(updates)
	if len(updates) == 0 || len(updates) > MaxUpdatesPerWrite/4 {
		return b.spice.Write(ctx, updates)
	}
	req := &batchRequest{ctx: ctx, updates: updates, done: make(chan batchResult, 1)}
	select {
	case b.queue <- req:
	case <-ctx.Done():
		return "", ctx.Err()
	case <-b.stop:
		return b.spice.Write(ctx, updates)
	}
	// Wait for the answer even if ctx ends: a flusher that took the request
	// cancels its call when any of its jobs' contexts ends, so it answers
	// promptly.
	// Returning earlier would let this job retry, write newer state and
	// fence while its old write is still in flight — and lands last.
	select {
	case res := <-req.done:
		return res.token, res.err
	case <-b.closed:
		return "", errors.New("SpiceDB write batcher closed")
	}
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
		seen := make(map[Relationship]bool, len(first.updates))
		n := 0
		add := func(r *batchRequest) {
			for _, u := range r.updates {
				seen[u.Relationship] = true
			}
			n += len(r.updates)
		}
		add(first)
	drain:
		for n < MaxUpdatesPerWrite {
			select {
			case r := <-b.queue:
				if n+len(r.updates) > MaxUpdatesPerWrite || repeats(seen, r.updates) {
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

func repeats(seen map[Relationship]bool, updates []Update) bool {
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
	var all []Update
	for _, r := range batch {
		if r.ctx.Err() != nil {
			r.done <- batchResult{err: r.ctx.Err()}
			continue
		}
		live = append(live, r)
		all = append(all, r.updates...)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout(live))
	defer cancel()
	// Any job giving up (timeout, shutdown) cancels the call it shares: its
	// Write waits for this call, and must return promptly.
	for _, r := range live {
		stop := context.AfterFunc(r.ctx, cancel)
		defer stop()
	}
	token, err := b.spice.Write(ctx, all)
	for _, r := range live {
		r.done <- batchResult{token: token, err: err}
	}
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
