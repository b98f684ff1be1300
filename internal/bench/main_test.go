package bench

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/microlock/microlock/internal/etcdtest"
)

// dataDirEnv names a directory for etcd's data, on disk and synced; by
// default the data is on tmpfs and not synced.
const dataDirEnv = "MICROLOCK_BENCH_DATADIR"

// cluster is the single etcd every benchmark of the run talks to. It is nil
// when no benchmark was asked for: the package's tests need no etcd.
var cluster *etcdtest.Cluster

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	flag.Parse()
	if f := flag.Lookup("test.bench"); f != nil && f.Value.String() != "" {
		c, err := launch()
		if err != nil {
			fmt.Fprintln(os.Stderr, "starting etcd:", err)
			os.Exit(2)
		}
		cluster = c
	}
	code := m.Run()
	if cluster != nil {
		cluster.Stop()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// launch starts the run's etcd and prints, for the report, its version and
// where its data lives, in the "key: value" form of go test's own header.
func launch() (*etcdtest.Cluster, error) {
	opts, where, err := etcdOptions()
	if err != nil {
		return nil, err
	}
	c, err := etcdtest.Launch(1, opts...)
	if err != nil {
		return nil, err
	}
	cli, err := newClient(c.Endpoints(), nil)
	if err != nil {
		c.Stop()
		return nil, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, c.Endpoints()[0])
	if err != nil {
		c.Stop()
		return nil, err
	}
	fmt.Printf("etcd: %s, single node, data on %s\n", st.Version, where)
	return c, nil
}

// etcdOptions returns the options of every etcd a benchmark starts, and
// where they keep their data, for the report: by default on tmpfs, not
// synced; with MICROLOCK_BENCH_DATADIR, on disk there, synced.
func etcdOptions() (opts []etcdtest.Option, where string, err error) {
	dir := os.Getenv(dataDirEnv)
	if dir == "" {
		return nil, "tmpfs, no fsync", nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	return []etcdtest.Option{etcdtest.WithDataDir(dir), etcdtest.WithArgs("--unsafe-no-fsync=false")}, "disk under " + dir + ", fsync", nil
}

// etcdOf returns the run's etcd, or fails b if TestMain did not start one.
func etcdOf(b *testing.B) *etcdtest.Cluster {
	b.Helper()
	if cluster == nil {
		b.Fatal("no etcd: TestMain starts one only when -test.bench is set")
	}
	return cluster
}
