package prometheus_test

import (
	"os"
	"testing"

	"github.com/microlock/microlock/internal/etcdtest"
	"github.com/microlock/microlock/internal/testkit"
)

// shared is one real etcd server for every test and example of the package.
var shared *etcdtest.Cluster

func TestMain(m *testing.M) {
	os.Exit(testkit.Main(m, func(c *etcdtest.Cluster) { shared = c }))
}
