package telemetry_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/telemetry"
)

// receiver is an in-process OTLP trace receiver: what it was sent arrives
// on its channel.
type receiver struct {
	coltrace.UnimplementedTraceServiceServer
	got chan *coltrace.ExportTraceServiceRequest
}

func newReceiver() *receiver {
	return &receiver{got: make(chan *coltrace.ExportTraceServiceRequest, 16)}
}

func (r *receiver) Export(_ context.Context, req *coltrace.ExportTraceServiceRequest) (*coltrace.ExportTraceServiceResponse, error) {
	r.got <- req
	return &coltrace.ExportTraceServiceResponse{}, nil
}

// httpHandler accepts OTLP/HTTP protobuf posts at path.
func (r *receiver) httpHandler(path string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost || req.URL.Path != path || req.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "not an OTLP/HTTP protobuf export to "+path, http.StatusNotFound)
			return
		}
		body, err := io.ReadAll(req.Body)
		var msg coltrace.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(body, &msg)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.got <- &msg
		out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	})
}

// startGRPC serves the receiver over OTLP/gRPC on a loopback port.
func (r *receiver) startGRPC(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	coltrace.RegisterTraceServiceServer(srv, r)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return "http://" + lis.Addr().String()
}

// loadTracing reads the configuration as serve does: OTEL_* from the
// process environment, a minimal valid TETHER_* set.
func loadTracing(t *testing.T) config.Tracing {
	t.Helper()
	cfg, err := config.Load(func(name string) string {
		switch name {
		case "TETHER_DATABASE_URL":
			return "postgres://u@db/tether"
		case "TETHER_SPICEDB_ENDPOINT":
			return "spicedb:50051"
		}
		return os.Getenv(name)
	}, config.ScopeDatabase)
	require.NoError(t, err)
	return cfg.Tracing
}

// OpenTelemetry's variables really export: each way of naming the endpoint,
// both protocols, and the service name with its default. Not parallel:
// the SDK reads the process environment (t.Setenv).
func TestTracesExportWhereTheVariablesSay(t *testing.T) {
	cases := []struct {
		name        string
		env         func(r *receiver, t *testing.T) map[string]string
		serviceName string
	}{
		{"base endpoint, http/protobuf by default", func(r *receiver, t *testing.T) map[string]string {
			srv := httptest.NewServer(r.httpHandler("/v1/traces"))
			t.Cleanup(srv.Close)
			return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL}
		}, "tether"},
		{"traces endpoint used as it is, with a service name", func(r *receiver, t *testing.T) map[string]string {
			srv := httptest.NewServer(r.httpHandler("/collector/traces"))
			t.Cleanup(srv.Close)
			return map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": srv.URL + "/collector/traces", "OTEL_SERVICE_NAME": "tether-eu"}
		}, "tether-eu"},
		{"grpc", func(r *receiver, t *testing.T) map[string]string {
			return map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": r.startGRPC(t), "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
		}, "tether"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newReceiver()
			for k, v := range tc.env(r, t) {
				t.Setenv(k, v)
			}
			cfg := loadTracing(t)
			require.True(t, cfg.TracingOn())
			ctx := context.Background()
			tp, err := telemetry.NewTracerProvider(ctx, cfg, "worker", nil)
			require.NoError(t, err)
			_, span := tp.Tracer("test").Start(ctx, "probe-span")
			span.End()
			shutdownCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			require.NoError(t, tp.Shutdown(shutdownCtx), "shutdown flushes the span")

			var req *coltrace.ExportTraceServiceRequest
			select {
			case req = <-r.got:
			case <-time.After(10 * time.Second):
				t.Fatal("the receiver got nothing")
			}
			require.Len(t, req.ResourceSpans, 1)
			res := map[string]string{}
			for _, kv := range req.ResourceSpans[0].Resource.Attributes {
				res[kv.Key] = kv.Value.GetStringValue()
			}
			require.Equal(t, tc.serviceName, res["service.name"])
			require.Equal(t, "worker", res["tether.role"])
			require.Len(t, req.ResourceSpans[0].ScopeSpans, 1)
			require.Equal(t, "probe-span", req.ResourceSpans[0].ScopeSpans[0].Spans[0].Name)
		})
	}
}

// QueryName names a span after the sqlc query, or the statement's first
// keyword, and never after anything else in the SQL.
func TestQueryName(t *testing.T) {
	t.Parallel()
	cases := map[string][2]string{
		"-- name: SyncFenceMany :many\nWITH x AS (SELECT 1) UPDATE sync_state": {"SyncFenceMany", "WITH"},
		"  select 1": {"SELECT", "SELECT"},
		"begin":      {"BEGIN", "BEGIN"},
		"-- a comment\n-- name: X :exec\nDELETE FROM t": {"X", "DELETE"},
		"'secret-literal' AS x":                         {"UNKNOWN", "UNKNOWN"},
		"":                                              {"UNKNOWN", "UNKNOWN"},
	}
	for sql, want := range cases {
		name, op := telemetry.QueryName(sql)
		require.Equal(t, want, [2]string{name, op}, "%q", sql)
		require.False(t, strings.Contains(name, "secret"))
	}
}
