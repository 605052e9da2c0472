package jobs_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"time"

	v1 "github.com/authzed/authzed-go/proto/authzed/api/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const writeMethod = "/authzed.api.v1.PermissionsService/WriteRelationships"

// faults injects failures into SpiceDB writes on purpose: before the call
// (the write never happens) or after it (the write landed, the answer was
// lost), and random delays that reorder concurrent writers.
type faults struct {
	mu         sync.Mutex
	rng        *rand.Rand
	failBefore float64
	failAfter  float64
	maxDelay   time.Duration
	down       bool
	injected   int
	writesSeen int
}

func (f *faults) interceptor() grpc.DialOption {
	return grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method != writeMethod {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		f.mu.Lock()
		f.writesSeen++
		down := f.down
		before := f.rng.Float64() < f.failBefore
		after := f.rng.Float64() < f.failAfter
		delay := time.Duration(0)
		if f.maxDelay > 0 {
			delay = time.Duration(f.rng.Int64N(int64(f.maxDelay)))
		}
		if down || before || after {
			f.injected++
		}
		f.mu.Unlock()
		if down || before {
			return status.Error(codes.Unavailable, "injected: SpiceDB unavailable")
		}
		time.Sleep(delay)
		if err := invoker(ctx, method, req, reply, cc, opts...); err != nil {
			return err
		}
		if after {
			return status.Error(codes.DeadlineExceeded, "injected: answer lost after the write landed")
		}
		return nil
	})
}

func (f *faults) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

// gate blocks the first write that matches until released: it forces a job
// to stall between reading the database and writing SpiceDB.
type gate struct {
	match   func(*v1.WriteRelationshipsRequest) bool
	once    sync.Once
	entered chan struct{}
	release chan struct{}
	landed  chan struct{} // closed when the held call has returned
	err     error         // what the held call returned, once landed is closed
}

func newGate(match func(*v1.WriteRelationshipsRequest) bool) *gate {
	return &gate{match: match, entered: make(chan struct{}), release: make(chan struct{}), landed: make(chan struct{})}
}

func (g *gate) interceptor() grpc.DialOption {
	return grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		w, ok := req.(*v1.WriteRelationshipsRequest)
		if method != writeMethod || !ok || !g.match(w) {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		held := false
		g.once.Do(func() { held = true })
		if !held {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		close(g.entered)
		// The test releases the gate; a call whose context ends first (its
		// deadline, or a test that failed before releasing) ends there, and
		// never reaches SpiceDB.
		select {
		case <-g.release:
		case <-ctx.Done():
			g.err = ctx.Err()
			close(g.landed)
			return g.err
		}
		err := invoker(ctx, method, req, reply, cc, opts...)
		g.err = err
		close(g.landed)
		return err
	})
}
