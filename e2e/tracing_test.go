package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/tetherhq/tether/internal/devtools/testenv"
)

// otlpReceiver is an in-process OTLP/HTTP trace receiver (/v1/traces,
// protobuf): it keeps every span it is sent with its process's role and
// service name.
type otlpReceiver struct {
	mu    sync.Mutex
	spans []receivedSpan
}

type receivedSpan struct {
	role, service string
	span          *tracepb.Span
}

func (r *otlpReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	var msg coltrace.ExportTraceServiceRequest
	if err == nil {
		err = proto.Unmarshal(body, &msg)
	}
	if req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" || err != nil {
		http.Error(w, fmt.Sprintf("not an OTLP/HTTP protobuf trace export: %v", err), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	for _, rs := range msg.ResourceSpans {
		attrs := map[string]string{}
		for _, kv := range rs.Resource.GetAttributes() {
			attrs[kv.Key] = kv.Value.GetStringValue()
		}
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				r.spans = append(r.spans, receivedSpan{role: attrs["tether.role"], service: attrs["service.name"], span: s})
			}
		}
	}
	r.mu.Unlock()
	out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (r *otlpReceiver) received() []receivedSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]receivedSpan(nil), r.spans...)
}

// `tether serve` processes export traces where OpenTelemetry's variables
// say, and one change is followed across processes: the API process's
// request span and River insert, then the worker process's job span, linked
// to that insert through the job's metadata, and its SpiceDB write.
func TestServeExportsTracesAcrossProcesses(t *testing.T) {
	t.Parallel()
	recv := &otlpReceiver{}
	collector := httptest.NewServer(recv)
	t.Cleanup(collector.Close)
	tt := testenv.StartTether(t, testenv.TetherOpts{NoWorkers: true})
	pools := setupPools(t, tt)
	env := with(processEnv(tt), map[string]string{
		"OTEL_EXPORTER_OTLP_ENDPOINT": collector.URL, "OTEL_SERVICE_NAME": "tether-e2e", "OTEL_BSP_SCHEDULE_DELAY": "50",
	})
	api := testenv.StartServe(t, env, "--role", "api")
	worker := testenv.StartServe(t, workerEnv(env), "--role", "worker")
	c := &stormClient{s: &storm{api: api.URL()}}
	require.NoError(t, c.send(t.Context(), http.MethodPost, fmt.Sprintf("/api/data/resource_pools/%d/users", pools[2].ID),
		adminToken(t), []map[string]string{{"id": "traced-user"}}))
	tt.WaitSynced(t, 30*time.Second)

	var request, insert, work *tracepb.Span
	var write bool
	require.Eventually(t, func() bool {
		spans := recv.received()
		request, insert, work, write = nil, nil, nil, false
		for _, s := range spans {
			switch {
			case s.role == "api" && s.span.Name == "POST /api/data/resource_pools/:resource_pool_id/users":
				request = s.span
			case s.role == "api" && s.span.Name == "river.insert_many":
				insert = s.span
			}
		}
		if request == nil || insert == nil || string(insert.TraceId) != string(request.TraceId) {
			return false
		}
		for _, s := range spans {
			if s.role == "worker" && s.span.Name == "river.work/tether.sync_pool" {
				for _, l := range s.span.Links {
					if string(l.SpanId) == string(insert.SpanId) {
						work = s.span
					}
				}
			}
		}
		for _, s := range spans {
			write = write || (s.role == "worker" && s.span.Name == writeMethod[1:])
		}
		return work != nil && write
	}, 20*time.Second, 50*time.Millisecond, "spans of the grant: request %v, insert %v, work %v, write %v", request != nil, insert != nil, work != nil, write)
	for _, s := range recv.received() {
		require.Equal(t, "tether-e2e", s.service, "OTEL_SERVICE_NAME names the service")
		require.Contains(t, []string{"api", "worker"}, s.role)
	}
	api.Stop(t, 20*time.Second)
	worker.Stop(t, 20*time.Second)
}
