package e2e

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs"
	"github.com/tetherhq/tether/jobs/spicedb"
)

const watchMethod = "/authzed.api.v1.WatchService/Watch"

// silencer makes Watch streams stop delivering without an error, as a
// connection that stopped answering does: every stream opened up to the
// moment silence is called delivers nothing more (it blocks until its
// context ends); streams opened after it work.
type silencer struct {
	opened, silencedUpTo atomic.Int64
}

func (s *silencer) silence() { s.silencedUpTo.Store(s.opened.Load()) }

func (s *silencer) interceptor() grpc.DialOption {
	return grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != watchMethod {
			return cs, err
		}
		return &silencedStream{ClientStream: cs, id: s.opened.Add(1), s: s}, nil
	})
}

type silencedStream struct {
	grpc.ClientStream
	id int64
	s  *silencer
}

func (c *silencedStream) RecvMsg(m any) error {
	if c.id <= c.s.silencedUpTo.Load() {
		<-c.Context().Done()
		return c.Context().Err()
	}
	err := c.ClientStream.RecvMsg(m)
	if err == nil && c.id <= c.s.silencedUpTo.Load() { // silenced while it waited
		<-c.Context().Done()
		return c.Context().Err()
	}
	return err
}

// TestSilentWatchStreamReconnects: the watcher's stream goes silent with no
// error. A foreign write made then would stay until the periodic reconcile
// (off here); but once one of Tether's own writes has gone undelivered for
// WatchSilence, the watcher takes the stream for dead, reconnects from the
// last revision it processed, and undoes the foreign write.
func TestSilentWatchStreamReconnects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	proc := testenv.StartSpiceDBProcess(t, false)
	s := &silencer{}
	const silence = 2 * time.Second
	tt := testenv.StartTether(t, testenv.TetherOpts{
		Heal: true,
		SpiceDB: func(c *spicedb.Config) {
			*c = proc.Config()
			c.DialOptions = append(c.DialOptions, s.interceptor())
		},
		Client: func(c *jobs.ClientConfig) { c.Heal.WatchSilence = silence },
	})
	tt.Provider(t, providerID)
	pool := tt.Pool(t, "gpu", providerID, false)
	tt.Connect(t, "alice", providerID)
	tt.WaitConverged(t, repairDeadline)
	tt.WaitWatchMode(t, "watch", repairDeadline)

	s.silence()
	foreign := testenv.ForeignClient(t, proc.Config())
	_, err := foreign.Write(ctx, []spicedb.Update{{Relationship: rel(spicedb.TypeResourcePool, pool.ID, spicedb.RelViewer, spicedb.TypeUser, "mallory")}})
	require.NoError(t, err)
	intruded := time.Now()
	tt.Connect(t, "bob", providerID) // one of Tether's own writes, which the silent stream never delivers
	tt.WaitSynced(t, repairDeadline)

	require.Eventually(t, func() bool { return !tt.CanView(t, "mallory", pool.ID) }, repairDeadline, 20*time.Millisecond,
		"the intruder is undone once the silent stream is replaced")
	t.Logf("intruder undone %s after it was written (silence limit %s)", time.Since(intruded).Round(time.Millisecond), silence)
	require.GreaterOrEqual(t, testutil.ToFloat64(tt.Metrics.Heal.WatchSilent), 1.0)
	require.GreaterOrEqual(t, s.opened.Load(), s.silencedUpTo.Load()+1, "a new stream was opened")
	tt.WaitConverged(t, repairDeadline)
}
