package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	"github.com/tetherhq/tether/internal/config"
	"github.com/tetherhq/tether/internal/devtools/testenv"
	"github.com/tetherhq/tether/jobs/spicedb"
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
	_, err := testenv.RunWorker(ctx, os.Getenv("HELPER_DATABASE_URL"), spicedb.Config{
		Endpoint: os.Getenv("HELPER_SPICEDB_ENDPOINT"), Token: os.Getenv("HELPER_SPICEDB_TOKEN"), Insecure: true,
		DialOptions: []grpc.DialOption{block},
	}, func(c *config.Config) { c.MaxWorkers = maxWorkers })
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper worker:", err)
		return 1
	}
	fmt.Fprintln(os.Stderr, "helper worker: started")
	select {}
}
