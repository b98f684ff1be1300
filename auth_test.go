package microlock_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// The prefix that the test's users may lock under.
const authPrefix = "locks/"

// authCluster is a single-node etcd with authentication on and three users:
// root; "writer", whose role may read and write only under authPrefix; and
// "reader", whose role may only read under authPrefix.
type authCluster struct {
	c *etcdtest.Cluster
}

func startAuth(t *testing.T) *authCluster {
	t.Helper()
	a := &authCluster{c: etcdtest.Start(t, 1)}
	cli := a.c.Client(t)
	ctx := ctxTimeout(t, 10*time.Second)
	end := clientv3.GetPrefixRangeEnd(authPrefix)
	steps := []func() error{
		func() error { _, err := cli.RoleAdd(ctx, "root"); return err },
		func() error { _, err := cli.UserAdd(ctx, "root", "root-pw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "lockers"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "lockers", authPrefix, end, clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, "writer", "writer-pw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "writer", "lockers"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "watchers"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "watchers", authPrefix, end, clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, "reader", "reader-pw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "reader", "watchers"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("setting up authentication, step %d: %v", i+1, err)
		}
	}
	// Authentication is on: a client without credentials may not even read.
	if _, err := cli.Get(ctx, authPrefix); err == nil {
		t.Fatal("a client without credentials could read with authentication on")
	}
	return a
}

// as returns a client logged in as user, closed at the end of the test.
func (a *authCluster) as(t *testing.T, user string) *clientv3.Client {
	t.Helper()
	cli, _ := a.counting(t, user)
	return cli
}

// counting is as, with the client's requests counted by gRPC method.
func (a *authCluster) counting(t *testing.T, user string) (*clientv3.Client, *rpcCounter) {
	t.Helper()
	rc := &rpcCounter{n: make(map[string]int)}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   a.c.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		Username:    user,
		Password:    user + "-pw",
		DialOptions: []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				rc.add(method)
				return invoker(ctx, method, req, reply, cc, opts...)
			}),
		},
	})
	if err != nil {
		t.Fatalf("logging in as %s: %v", user, err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli, rc
}

// leaseIDs returns the IDs of every lease etcd knows, sorted.
func leaseIDs(t *testing.T, root *clientv3.Client) []clientv3.LeaseID {
	t.Helper()
	resp, err := root.Leases(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatalf("listing leases: %v", err)
	}
	var ids []clientv3.LeaseID
	for _, l := range resp.Leases {
		ids = append(ids, l.ID)
	}
	slices.Sort(ids)
	return ids
}

// waitLeases waits up to within for etcd's leases to be want, and returns
// how long that took.
func waitLeases(t *testing.T, root *clientv3.Client, want []clientv3.LeaseID, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		got := leaseIDs(t, root)
		if slices.Equal(got, want) {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("leases after %v: %x, want %x", within, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// allKeys lists every key in etcd.
func allKeys(t *testing.T, root *clientv3.Client) []string {
	t.Helper()
	resp, err := root.Get(ctxTimeout(t, 5*time.Second), "", clientv3.WithFromKey(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatalf("listing keys: %v", err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}

// isPermissionDenied reports whether err is a microlock error that says
// permission was denied, and matches etcd's error for errors.Is.
func isPermissionDenied(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "microlock: ") &&
		strings.Contains(err.Error(), "permission denied") &&
		errors.Is(err, rpctypes.ErrPermissionDenied)
}

// TestAuthScopedUser: a user whose role may write only under locks/ can use
// every part of the library there: TryLock, Lock in a queue, automatic and
// explicit renewal, Watch, Unlock and WithLock.
func TestAuthScopedUser(t *testing.T) {
	a := startAuth(t)
	w := a.as(t, "writer")
	key := authPrefix + t.Name()
	ctx := ctxTimeout(t, 30*time.Second)

	wctx, cancel := context.WithCancel(ctx)
	events, err := microlock.Watch(wctx, w, key)
	if err != nil {
		t.Fatalf("Watch as writer: %v", err)
	}
	defer drain(t, cancel, events)
	expectEvent(t, events, microlock.Unlocked, "", 0)

	log := &eventLog{}
	first := newMutex(t, w, key, microlock.WithNodeID("w1"), microlock.WithTTL(2*time.Second), microlock.OnEvent(log.hook))
	if err := first.TryLock(ctx); err != nil {
		t.Fatalf("TryLock as writer: %v", err)
	}
	expectEvent(t, events, microlock.Locked, "w1", first.Token())
	if err := first.Renew(ctx); err != nil {
		t.Fatalf("Renew as writer: %v", err)
	}

	// A second writer queues behind the first, watching it.
	second := newMutex(t, a.as(t, "writer"), key, microlock.WithNodeID("w2"))
	got := make(chan error, 1)
	go func() { got <- second.Lock(ctx) }()
	// Longer than the TTL: the hold lives on automatic renewals.
	time.Sleep(3 * time.Second)
	select {
	case err := <-got:
		t.Fatalf("second Lock returned %v while the first holds", err)
	default:
	}
	if err := first.Err(); err != nil || log.count(microlock.Renewed) < 2 {
		t.Fatalf("first hold after 3 s: err %v, %d renewals; want held and renewed", err, log.count(microlock.Renewed))
	}
	if err := first.Unlock(ctx); err != nil {
		t.Fatalf("Unlock as writer: %v", err)
	}
	if err := <-got; err != nil {
		t.Fatalf("queued Lock as writer: %v", err)
	}
	expectEvent(t, events, microlock.Locked, "w2", second.Token())
	if err := second.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, events, microlock.Unlocked, "", 0)

	var token int64
	err = microlock.WithLock(ctx, w, key, func(ctx context.Context) error {
		m, _ := microlock.FromContext(ctx)
		token = m.Token()
		return nil
	}, microlock.WithNodeID("w3"))
	if err != nil || token == 0 {
		t.Fatalf("WithLock as writer = %v (token %d)", err, token)
	}
	expectEvent(t, events, microlock.Locked, "w3", token)
	expectEvent(t, events, microlock.Unlocked, "", 0)
}

// TestAuthDeniedOutsidePrefix: the same user locking outside locks/ gets an
// error that says permission was denied, from TryLock, Lock and WithLock,
// at once and without retries, and leaves no key and no lease in etcd. The
// lease that the refused attempt was granted is revoked at once, not kept
// for reuse; a lease that also backs a live hold under locks/ keeps that
// hold and is revoked as soon as the hold ends.
func TestAuthDeniedOutsidePrefix(t *testing.T) {
	a := startAuth(t)
	root := a.as(t, "root")
	w, calls := a.counting(t, "writer")
	outside := "elsewhere/" + t.Name()
	ctx := ctxTimeout(t, 30*time.Second)

	x := deniedCase{root, w, calls, outside, ctx}
	t.Run("fresh client", x.freshClient)

	t.Run("client holding a lock", x.onHoldsLease)
}

// deniedCase is what the subtests of TestAuthDeniedOutsidePrefix share: a
// root client to check with, the writer's client, its request counts, and a
// key outside the writer's prefix.
type deniedCase struct {
	root    *clientv3.Client
	w       *clientv3.Client
	calls   *rpcCounter
	outside string
	ctx     context.Context
}

// freshClient: every way of locking outside the prefix is refused at
// once, and the refused attempts leave no key and no lease.
func (x deniedCase) freshClient(t *testing.T) {
	root, w, calls, outside, ctx := x.root, x.w, x.calls, x.outside, x.ctx
	before := leaseIDs(t, root)
	log := &eventLog{}
	m := newMutex(t, w, outside, microlock.OnEvent(log.hook))
	for name, try := range map[string]func() error{
		"TryLock": func() error { return m.TryLock(ctx) },
		"Lock":    func() error { return m.Lock(ctx) },
		"WithLock": func() error {
			return microlock.WithLock(ctx, w, outside, func(context.Context) error {
				t.Error("fn ran without permission")
				return nil
			}, microlock.OnEvent(log.hook))
		},
	} {
		start := time.Now()
		err := try()
		t.Logf("%s outside %s after %v: %v", name, authPrefix, time.Since(start).Round(time.Millisecond), err)
		if !isPermissionDenied(err) {
			t.Errorf("%s outside %s = %v, want a microlock: error matching rpctypes.ErrPermissionDenied", name, authPrefix, err)
		}
	}
	if n := log.count(microlock.Retrying); n != 0 {
		t.Errorf("a refused write was retried %d times", n)
	}
	if keys := allKeys(t, root); len(keys) != 0 {
		t.Fatalf("keys left in etcd: %q", keys)
	}
	// Well within the 10 s that an unused lease is otherwise kept.
	took := waitLeases(t, root, before, 3*time.Second)
	n := calls.snapshot()
	t.Logf("%d leases granted and %d revoked for the refused attempts; none left %v after the last one",
		n["LeaseGrant"], n["LeaseRevoke"], took.Round(time.Millisecond))
	if n["LeaseGrant"] == 0 {
		t.Fatal("no lease was granted: the check above proves nothing")
	}
}

// onHoldsLease: a refused attempt on the lease of a live hold leaves the
// hold alone, and the lease goes when the hold ends.
func (x deniedCase) onHoldsLease(t *testing.T) {
	root, w, outside, ctx := x.root, x.w, x.outside, x.ctx
	before := leaseIDs(t, root)
	held := newMutex(t, w, authPrefix+t.Name(), microlock.WithTTL(2*time.Second))
	if err := held.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	withHold := leaseIDs(t, root)
	if len(withHold) != len(before)+1 {
		t.Fatalf("leases while holding: %x, want one more than %x", withHold, before)
	}
	// Same client, same TTL: the refused attempt shares the hold's lease.
	m := newMutex(t, w, outside, microlock.WithTTL(2*time.Second))
	if err := m.TryLock(ctx); !isPermissionDenied(err) {
		t.Fatalf("TryLock outside %s = %v, want permission denied", authPrefix, err)
	}
	// Past the TTL: the hold lives on, its lease renewed.
	time.Sleep(3 * time.Second)
	if err := held.Err(); err != nil {
		t.Fatalf("the hold under %s was lost after a refused write on its lease: %v", authPrefix, err)
	}
	if got := leaseIDs(t, root); !slices.Equal(got, withHold) {
		t.Fatalf("leases after the refused write: %x, want %x", got, withHold)
	}
	if err := held.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	took := waitLeases(t, root, before, 3*time.Second)
	t.Logf("the shared lease was revoked %v after the hold ended", took.Round(time.Millisecond))
	if keys := allKeys(t, root); len(keys) != 0 {
		t.Fatalf("keys left in etcd: %q", keys)
	}
}

// TestAuthReadOnly: a user who may only read under locks/ can watch a lock
// and see who holds it, but cannot take, renew or release it, through the
// library or through etcd directly, and his attempts leave no lease behind.
func TestAuthReadOnly(t *testing.T) {
	a := startAuth(t)
	root := a.as(t, "root")
	w := a.as(t, "writer")
	r, calls := a.counting(t, "reader")
	key := authPrefix + t.Name()
	ctx := ctxTimeout(t, 30*time.Second)

	holder := newMutex(t, w, key, microlock.WithNodeID("writer-node"), microlock.WithTTL(2*time.Second))
	if err := holder.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	leasesHeld := leaseIDs(t, root)

	wctx, cancel := context.WithCancel(ctx)
	events, err := microlock.Watch(wctx, r, key)
	if err != nil {
		t.Fatalf("Watch as reader: %v", err)
	}
	defer drain(t, cancel, events)
	expectEvent(t, events, microlock.Locked, "writer-node", holder.Token())

	m := newMutex(t, r, key, microlock.WithNodeID("reader-node"))
	for name, try := range map[string]func() error{
		"TryLock": func() error { return m.TryLock(ctx) },
		"Lock":    func() error { return m.Lock(ctx) },
		"WithLock": func() error {
			return microlock.WithLock(ctx, r, key, func(context.Context) error {
				t.Error("fn ran for a read-only user")
				return nil
			})
		},
	} {
		if err := try(); !isPermissionDenied(err) {
			t.Errorf("%s as reader = %v, want permission denied", name, err)
		}
	}
	for name, err := range map[string]error{"Renew": m.Renew(ctx), "Unlock": m.Unlock(ctx)} {
		if !errors.Is(err, microlock.ErrNotOwner) {
			t.Errorf("%s as reader = %v, want ErrNotOwner", name, err)
		}
	}

	// Nor can the reader release or end the hold with etcd's own calls.
	kv := readerCannotEnd(ctx, t, r, key)
	if err := holder.Err(); err != nil || holder.Token() != kv.CreateRevision {
		t.Fatalf("the writer's hold after the reader's attempts: err %v, token %d; want held with token %d", err, holder.Token(), kv.CreateRevision)
	}
	took := waitLeases(t, root, leasesHeld, 3*time.Second)
	n := calls.snapshot()
	t.Logf("%d leases granted for the reader's attempts; none left %v later", n["LeaseGrant"], took.Round(time.Millisecond))
	if n["LeaseGrant"] == 0 {
		t.Fatal("no lease was granted to the reader: the lease check proves nothing")
	}
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, events, microlock.Unlocked, "", 0)
}

// readerCannotEnd checks that the read-only client r can read the holder's
// key under key but neither delete it nor revoke its lease, and returns it.
func readerCannotEnd(ctx context.Context, t *testing.T, r *clientv3.Client, key string) *mvccpb.KeyValue {
	t.Helper()
	resp, err := r.Get(ctx, key+"/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("reader's Get of the queue = %v, %v; want the holder's key", resp, err)
	}
	kv := resp.Kvs[0]
	if _, err := r.Delete(ctx, string(kv.Key)); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("reader's Delete of the holder's key = %v, want permission denied", err)
	}
	if _, err := r.Revoke(ctx, clientv3.LeaseID(kv.Lease)); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("reader's Revoke of the holder's lease = %v, want permission denied", err)
	}
	// Keep-alives need write permission from etcd 3.5 on; etcd 3.4 lets
	// anyone who knows a lease ID extend it. Either way the reader can only
	// make a hold last longer, never take the lock.
	switch _, err := r.KeepAliveOnce(ctx, clientv3.LeaseID(kv.Lease)); {
	case err == nil:
		t.Logf("reader's KeepAliveOnce of the holder's lease: allowed by this etcd")
	case errors.Is(err, rpctypes.ErrPermissionDenied):
		t.Logf("reader's KeepAliveOnce of the holder's lease: %v", err)
	default:
		t.Errorf("reader's KeepAliveOnce of the holder's lease = %v, want success or permission denied", err)
	}

	return kv
}
