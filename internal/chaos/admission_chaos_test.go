package chaos_test

import (
	"os"
	"testing"

	"github.com/microlock/microlock/internal/chaos"
)

// TestChaosAdmission runs the workload on a semaphore of limit 3 and on a
// shared lock with exclusive holds among the shared ones, each on a fresh
// cluster, and fails on any violation that the checks forbid: more holders
// at once than the limit, an exclusive hold with another, a guarded write
// that landed outside its hold or before its rule admitted it. Its short
// profile injects one fault per variant, a partition of a holder (its permit
// must go to a waiter only after its loss signal), to stay within about 30 s;
// the full one injects every kind.
func TestChaosAdmission(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault-injection suite runs for minutes")
	}
	p := chaos.ShortAdmission()
	if os.Getenv(envProfile) == "full" {
		p = profile(t)
	}
	suite(t, p, []chaos.Variant{chaos.Semaphore, chaos.SharedLock}, "chaos-report-admission.txt")
}
