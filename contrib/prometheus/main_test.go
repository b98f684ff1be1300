package prometheus_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/microlock/microlock/internal/etcdtest"
)

// shared is one real etcd server for every test and example of the package.
var shared *etcdtest.Cluster

func TestMain(m *testing.M) {
	c, err := etcdtest.Launch(1)
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting etcd:", err)
		os.Exit(2)
	}
	shared = c
	code := m.Run()
	c.Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
