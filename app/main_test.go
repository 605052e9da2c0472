package app_test

import (
	"testing"

	"github.com/tetherhq/tether/internal/devtools/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
