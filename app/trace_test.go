package app_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tetherhq/tether/internal/devtools/testenv"
)

const (
	writeSpan     = "authzed.api.v1.PermissionsService/WriteRelationships"
	fenceSpan     = "SyncFenceMany"
	callbackSpan  = "GET /api/data/oauth2/callback"
	insertSpan    = "river.insert_many"
	connWorkSpan  = "river.work/tether.sync_connection"
	batchSpanName = "tether.spicedb_write_batch"
)

// One connect, traced as production traces it: the callback's request span
// holds the service transaction, whose statements and River insert are its
// children; the job's work span links to that insert; and the SpiceDB write
// that applied the change — group-committed, so in a trace of its own —
// links to the job, and the job's trace links back to it.
func TestConnectIsOneTrace(t *testing.T) {
	t.Parallel()
	rec := testenv.NewSpanRecorder(t)
	b := setupServer(t, testenv.TetherOpts{TracerProvider: rec})
	b.tt.WaitSynced(t, 15*time.Second) // the setup's pool job
	b.connect(t, b.browser(t, "alice"))
	b.tt.WaitSynced(t, 15*time.Second)

	var ix spanIndex
	var callback, tx, insert, work, write tracetest.SpanStub
	require.Eventually(t, func() bool { // the batch span ends just after it hands the jobs their results
		ix = newSpanIndex(rec.Spans())
		var ok bool
		if callback, ok = ix.one(callbackSpan, nil); !ok {
			return false
		}
		if insert, ok = ix.one(insertSpan, func(s tracetest.SpanStub) bool { return ix.descends(s, callback) }); !ok {
			return false
		}
		// The callback runs more than one transaction (the state's, then the
		// connection's): the one that inserts the job is the insert's ancestor.
		if tx, ok = ix.first(func(s tracetest.SpanStub) bool {
			return strings.HasPrefix(s.Name, "tether.tx ") && s.Parent.SpanID() == callback.SpanContext.SpanID() && ix.descends(insert, s)
		}); !ok {
			return false
		}
		if work, ok = ix.one(connWorkSpan, func(s tracetest.SpanStub) bool { return linksTo(s, insert) }); !ok {
			return false
		}
		write, ok = ix.one(writeSpan, func(s tracetest.SpanStub) bool { return ix.descends(s, work) || ix.batchFor(s, work) })
		return ok
	}, 10*time.Second, 20*time.Millisecond, "the connect's spans, from the callback to the SpiceDB write:\n%s", rec.Text())

	require.Equal(t, trace.SpanKindServer, callback.SpanKind)
	requireAttr(t, callback, "http.route", "/api/data/oauth2/callback")
	requireAttr(t, callback, "http.response.status_code", "302")
	for _, stmt := range []string{"ConnectionUpsertStatus", "SyncBump", "COMMIT"} {
		_, ok := ix.one(stmt, func(s tracetest.SpanStub) bool { return ix.descends(s, tx) })
		require.True(t, ok, "statement %s is a child of the transaction's span", stmt)
	}
	require.Equal(t, callback.SpanContext.TraceID(), insert.SpanContext.TraceID(), "request, transaction and insert are one trace")
	requireAttr(t, work, "status", "ok")
	requireAttr(t, write, "rpc.response.status_code", "OK")
	// The fence of the same write is traced beside it.
	parent := write.Parent.SpanID()
	_, fenced := ix.one(fenceSpan, func(s tracetest.SpanStub) bool { return s.Parent.SpanID() == parent })
	require.True(t, fenced, "the fence after the write is traced under the same parent")
	if batch, ok := ix.byID[parent]; ok && batch.Name == batchSpanName {
		// Group committed: the job's trace links to the shared write too.
		_, back := ix.one("tether.apply_batched", func(s tracetest.SpanStub) bool { return ix.descends(s, work) && linksTo(s, batch) })
		require.True(t, back, "the job's apply span links to the batch that carried it")
	}
}

// spanIndex finds spans by id, name and ancestry.
type spanIndex struct {
	spans tracetest.SpanStubs
	byID  map[trace.SpanID]tracetest.SpanStub
}

func newSpanIndex(spans tracetest.SpanStubs) spanIndex {
	ix := spanIndex{spans: spans, byID: make(map[trace.SpanID]tracetest.SpanStub, len(spans))}
	for _, s := range spans {
		ix.byID[s.SpanContext.SpanID()] = s
	}
	return ix
}

// one returns the only span named name that match accepts (nil: all).
func (ix spanIndex) one(name string, match func(tracetest.SpanStub) bool) (tracetest.SpanStub, bool) {
	return ix.first(func(s tracetest.SpanStub) bool { return s.Name == name && (match == nil || match(s)) })
}

// first returns the only span match accepts.
func (ix spanIndex) first(match func(tracetest.SpanStub) bool) (tracetest.SpanStub, bool) {
	var found []tracetest.SpanStub
	for _, s := range ix.spans {
		if match(s) {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		return tracetest.SpanStub{}, false
	}
	return found[0], true
}

// descends reports whether s is ancestor or below it.
func (ix spanIndex) descends(s, ancestor tracetest.SpanStub) bool {
	for range len(ix.spans) + 1 {
		if s.SpanContext.SpanID() == ancestor.SpanContext.SpanID() {
			return true
		}
		parent, ok := ix.byID[s.Parent.SpanID()]
		if !ok {
			return false
		}
		s = parent
	}
	return false
}

// batchFor reports whether s belongs to a group-committed write that links
// to a span of job's.
func (ix spanIndex) batchFor(s, job tracetest.SpanStub) bool {
	batch, ok := ix.byID[s.Parent.SpanID()]
	if !ok || batch.Name != batchSpanName {
		return false
	}
	for _, l := range batch.Links {
		if linked, ok := ix.byID[l.SpanContext.SpanID()]; ok && ix.descends(linked, job) {
			return true
		}
	}
	return false
}

func linksTo(s, target tracetest.SpanStub) bool {
	for _, l := range s.Links {
		if l.SpanContext.SpanID() == target.SpanContext.SpanID() {
			return true
		}
	}
	return false
}

func requireAttr(t *testing.T, s tracetest.SpanStub, key, want string) {
	t.Helper()
	var got []string
	for _, a := range s.Attributes {
		if string(a.Key) == key {
			got = append(got, a.Value.Emit())
		}
	}
	require.Equal(t, []string{want}, got, "attribute %s of span %s (%s)", key, s.Name, strings.Join(got, ","))
}
