package spicedb

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// What a call can find out about the store, for the healer (jobs.Healer):
// a store without Tether's schema, or SpiceDB out of reach.

// Triggers reported to Hooks.StoreLost.
const (
	// TriggerWrite: a write met a store without Tether's schema.
	TriggerWrite = "write"
	// TriggerProbe: the readiness probe or a metrics scrape found the
	// schema missing or different.
	TriggerProbe = "probe"
)

// Hooks hear what the client's calls find out.
type Hooks struct {
	// StoreLost: a call met a store without Tether's schema.
	StoreLost func(trigger string)
	// Unreachable: a write could not reach SpiceDB or got no answer in time.
	Unreachable func()
}

// SetHooks installs hooks (nil removes them).
func (s *Client) SetHooks(h *Hooks) { s.hooks.Store(h) }

// Probe is CheckSchema for health checks (the readiness probe, metrics): a
// schema found missing or different is also reported as a lost store, so
// that a wipe is repaired within seconds of being seen.
func (s *Client) Probe(ctx context.Context) (SchemaState, error) {
	state, err := s.CheckSchema(ctx)
	if err == nil && state != SchemaCurrent {
		s.reportStoreLost(TriggerProbe)
	}
	return state, err
}

// reportFailure tells the hooks, if any, what a failed write implies.
func (s *Client) reportFailure(err error) {
	h := s.hooks.Load()
	switch {
	case h == nil:
	case IsSchemaMissing(err):
		h.StoreLost(TriggerWrite)
	case isUnreachable(err):
		h.Unreachable()
	}
}

// isUnreachable reports whether err says SpiceDB could not be reached or
// did not answer in time (as opposed to an answer refusing the call).
func isUnreachable(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	st, ok := status.FromError(UnwrapStatus(err))
	if !ok {
		return true
	}
	return st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded
}

// reportStoreLost tells the hooks, if any, that the store lost its schema.
func (s *Client) reportStoreLost(trigger string) {
	if h := s.hooks.Load(); h != nil {
		h.StoreLost(trigger)
	}
}
