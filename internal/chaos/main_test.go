package chaos_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every goroutine of the suite, its proxies and its clients must be gone
// once the run is over, faults and all.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
