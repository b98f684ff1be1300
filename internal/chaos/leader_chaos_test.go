package chaos_test

import (
	"os"
	"testing"

	"github.com/microlock/microlock/internal/chaos"
)

// TestChaosLeader runs the leader variant: every worker runs microlock.Lead,
// each term writes the counter through the fence with its token. Beyond the
// lock checks it fails on a term that started without its key and on a lost
// term after which the worker did not campaign again, and it reports the
// time from each fault that deposed a leader to the next leader. Its short
// profile injects a partition and a pause of the leader, to stay within
// about 30 s; the full one injects every kind. Run only this variant's full
// profile with make chaos-leader.
func TestChaosLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault-injection suite runs for minutes")
	}
	p := chaos.ShortLeader()
	if os.Getenv(envProfile) == "full" {
		p = profile(t)
	}
	suite(t, p, []chaos.Variant{chaos.Leader}, "chaos-report-leader.txt")
}
