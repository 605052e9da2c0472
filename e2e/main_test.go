package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"

	"github.com/tetherhq/tether/internal/testenv"
	"github.com/tetherhq/tether/jobs"
)

// helperWorkerEnv makes the test binary run as a worker process that a test
// kills (see TestWorkerKilledMidBatch) instead of running tests.
const helperWorkerEnv = "TETHER_E2E_HELPER_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(helperWorkerEnv) != "" {
		os.Exit(helperWorker())
	}
	testenv.Main(m)
}

const writeMethod = "/authzed.api.v1.PermissionsService/WriteRelationships"

// helperWorker runs River workers (HELPER_MAX_WORKERS of them) that let
// HELPER_PASS_WRITES SpiceDB writes through and then block every further
// write forever, touching HELPER_MARKER at the first blocked one. It never
// returns: the test kills it.
func helperWorker() int {
	ctx := context.Background()
	pass, _ := strconv.ParseInt(os.Getenv("HELPER_PASS_WRITES"), 10, 64)
	maxWorkers, _ := strconv.Atoi(os.Getenv("HELPER_MAX_WORKERS"))
	var writes atomic.Int64
	var marked atomic.Bool
	block := grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == writeMethod && writes.Add(1) > pass {
			if marked.CompareAndSwap(false, true) {
				_ = os.WriteFile(os.Getenv("HELPER_MARKER"), nil, 0o644)
			}
			select {} // killed here, mid-write
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	poolCfg, err := pgxpool.ParseConfig(os.Getenv("HELPER_DATABASE_URL"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper worker:", err)
		return 1
	}
	poolCfg.MaxConns = 20 // as tether serve
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper worker:", err)
		return 1
	}
	spice, err := jobs.NewSpiceDB(jobs.SpiceDBConfig{
		Endpoint: os.Getenv("HELPER_SPICEDB_ENDPOINT"), Token: os.Getenv("HELPER_SPICEDB_TOKEN"), Insecure: true,
		DialOptions: []grpc.DialOption{block},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper worker:", err)
		return 1
	}
	syncer := &jobs.Syncer{DB: pool, SpiceDB: spice, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MaxBackoff: time.Second}
	cfg := jobs.DefaultClientConfig()
	cfg.MaxWorkers = maxWorkers
	cfg.ReconcileInterval = 0
	client, _, err := jobs.NewClient(pool, syncer, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper worker:", err)
		return 1
	}
	if err := client.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "helper worker:", err)
		return 1
	}
	fmt.Fprintln(os.Stderr, "helper worker: started")
	select {}
}
