// Package testkit holds what the test binaries that share one real etcd
// server among their tests have in common: their TestMain (start etcd, run
// the tests, stop it, check with goleak that no goroutine outlived them) and
// small helpers.
package testkit

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/microlock/microlock/internal/etcdtest"
)

// Main starts a one-member etcd, hands it to use, runs the tests, stops it,
// and returns the exit code for os.Exit: 2 if etcd did not start, 1 if a
// test failed or a goroutine was left behind.
func Main(m *testing.M, use func(*etcdtest.Cluster)) int {
	c, err := etcdtest.Launch(1)
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting etcd:", err)
		return 2
	}
	use(c)
	code := m.Run()
	c.Stop()
	if code == 0 {
		// Every goroutine the code under test started must have been
		// stopped by now, including those of tests that failed on purpose.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}
