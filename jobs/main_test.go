package jobs_test

import (
	"os"
	"testing"

	"github.com/tetherhq/tether/internal/devtools/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperWorkerEnv) != "" {
		os.Exit(helperWorker())
	}
	testenv.Main(m)
}
