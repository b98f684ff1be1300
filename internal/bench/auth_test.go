package bench

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// authUser is the user BenchmarkAuth locks as: a password user whose role
// may read and write under bench/, where freshKey's keys are, as a locking
// service's user would be (root skips etcd's permission checks).
const authUser, authPassword = "bench", "bench-pw"

// BenchmarkAuth measures what username/password authentication costs
// microlock. Two fresh single-node etcds, alike but for authentication,
// serve the two sides: one with authentication off, one with it on, where
// microlock's client logs in as authUser. Having a server each, each side's
// server CPU is its own. The sides run in turn, one of each per op:
//
//   - cycle: Mutex.Lock+Unlock on a key nobody else wants;
//   - renew: Mutex.Renew of a held lock;
//
// and then, side after side, C=2: two contenders, each with a client of its
// own, on one key. Each reports, per op and per side, the etcd server's CPU
// time, and the Authenticate calls the server with authentication handled
// (from its gRPC metrics): etcd checks the password with bcrypt and commits
// a new token through raft for each.
func BenchmarkAuth(b *testing.B) {
	opts, _, err := etcdOptions()
	if err != nil {
		b.Fatal(err)
	}
	plain := etcdtest.Start(b, 1, opts...)
	auth := etcdtest.Start(b, 1, opts...)
	enableAuth(b, auth)

	b.Run("cycle", func(b *testing.B) {
		no := newMicrolock(b, plain.Client(b), freshKey(b))
		on := newMicrolock(b, authClient(b, auth), freshKey(b))
		measureAuth(b, plain, auth, func() {
			runInTurn(b, []step{
				{"noauth", func(ctx context.Context) error { return lockUnlock(ctx, no) }},
				{"auth", func(ctx context.Context) error { return lockUnlock(ctx, on) }},
			})
		})
	})
	b.Run("renew", func(b *testing.B) {
		no := newMicrolock(b, plain.Client(b), freshKey(b))
		on := newMicrolock(b, authClient(b, auth), freshKey(b))
		for _, m := range []*microlock.Mutex{no, on} {
			if err := m.Lock(benchCtx(b)); err != nil {
				b.Fatal(err)
			}
		}
		measureAuth(b, plain, auth, func() {
			runInTurn(b, []step{
				{"noauth", no.Renew},
				{"auth", on.Renew},
			})
		})
	})
	for _, side := range []struct {
		name   string
		c      *etcdtest.Cluster
		client func(*testing.B, *etcdtest.Cluster) *clientv3.Client
	}{
		{"noauth", plain, func(b *testing.B, c *etcdtest.Cluster) *clientv3.Client { return c.Client(b) }},
		{"auth", auth, authClient},
	} {
		b.Run("C=2/"+side.name, func(b *testing.B) {
			key := freshKey(b)
			ls := []locker{newMicrolock(b, side.client(b, side.c), key), newMicrolock(b, side.client(b, side.c), key)}
			pid := side.c.Members[0].PID()
			n0, cpu0 := authenticates(b, auth), processCPU(pid)
			contend(b, ls)
			// As contend counts them: whole rounds, at least minRounds.
			c := len(ls)
			total := (max(b.N, minRounds*c) + c - 1) / c * c
			handoffs := float64(total - 1)
			b.ReportMetric(float64((processCPU(pid)-cpu0).Microseconds())/handoffs, "etcd-cpu-us/op")
			if side.c == auth {
				b.ReportMetric((authenticates(b, auth)-n0)/handoffs, "authenticate/op")
			}
		})
	}
}

// measureAuth runs run, which runs b.N ops of each side, and reports each
// side's etcd CPU per op and the Authenticate calls per op of the side with
// authentication.
func measureAuth(b *testing.B, plain, auth *etcdtest.Cluster, run func()) {
	pp, ap := plain.Members[0].PID(), auth.Members[0].PID()
	n0 := authenticates(b, auth)
	pc, ac := processCPU(pp), processCPU(ap)
	run()
	ops := float64(b.N)
	b.ReportMetric(float64((processCPU(pp)-pc).Microseconds())/ops, "noauth-etcd-cpu-us")
	b.ReportMetric(float64((processCPU(ap)-ac).Microseconds())/ops, "auth-etcd-cpu-us")
	b.ReportMetric((authenticates(b, auth)-n0)/ops, "auth-authenticate/op")
}

// enableAuth turns authentication on in c: a root user (which etcd
// requires first), and authUser with a role that may read and write under
// bench/.
func enableAuth(b *testing.B, c *etcdtest.Cluster) {
	b.Helper()
	cli := c.Client(b)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	steps := []func() error{
		func() error { _, err := cli.RoleAdd(ctx, "root"); return err },
		func() error { _, err := cli.UserAdd(ctx, "root", "root-pw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "lockers"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "lockers", "bench/", clientv3.GetPrefixRangeEnd("bench/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, authUser, authPassword); return err },
		func() error { _, err := cli.UserGrantRole(ctx, authUser, "lockers"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			b.Fatalf("enabling authentication, step %d: %v", i+1, err)
		}
	}
}

// authClient returns a client of c logged in as authUser, closed when the
// benchmark function returns.
func authClient(b *testing.B, c *etcdtest.Cluster) *clientv3.Client {
	b.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		Username:    authUser,
		Password:    authPassword,
	})
	if err != nil {
		b.Fatalf("logging in as %s: %v", authUser, err)
	}
	b.Cleanup(func() { _ = cli.Close() })
	return cli
}

// authenticates returns how many Authenticate calls the cluster's first
// member has handled, whatever their outcome.
func authenticates(b *testing.B, c *etcdtest.Cluster) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	n, err := c.Members[0].GRPCHandled(ctx, "Authenticate")
	if err != nil {
		b.Fatal(err)
	}
	return n
}
