package microlock_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// holdLease returns the lease of the key m holds.
func holdLease(t *testing.T, c *clientv3.Client, m *microlock.Mutex) clientv3.LeaseID {
	t.Helper()
	resp, err := c.Get(ctxTimeout(t, 5*time.Second), m.Key()+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if kv.CreateRevision == m.Token() {
			return clientv3.LeaseID(kv.Lease)
		}
	}
	t.Fatalf("no key of token %d under %q", m.Token(), m.Key())
	return 0
}

// TestRenewRevokedLease: etcd's client reports an unknown lease as an
// ErrLeaseNotFound error, not as a TTL of zero. Renew must still see it for
// what it is: the hold is over.
func TestRenewRevokedLease(t *testing.T) {
	c := client(t)
	m := newMutex(t, c, testKey(t), microlock.WithTTL(5*time.Second))
	ctx := ctxTimeout(t, 10*time.Second)
	if err := m.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	// Revoke and renew at once, before the hold's key watch (which starts
	// after a short delay) could notice the deletion on its own.
	if _, err := client(t).Revoke(ctx, holdLease(t, c, m)); err != nil {
		t.Fatal(err)
	}
	err := m.Renew(ctx)
	if !errors.Is(err, microlock.ErrLockLost) {
		t.Fatalf("Renew on a revoked lease = %v, want an error wrapping ErrLockLost", err)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("Done not closed after Renew found the lease gone")
	}
	if !errors.Is(m.Err(), microlock.ErrLockLost) {
		t.Fatalf("Err() = %v, want ErrLockLost", m.Err())
	}
}

func TestRenewAfterClose(t *testing.T) {
	m := newMutex(t, client(t), testKey(t))
	ctx := ctxTimeout(t, 10*time.Second)
	if err := m.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Renew(ctx); !errors.Is(err, microlock.ErrClosed) {
		t.Fatalf("Renew after Close = %v, want ErrClosed", err)
	}
}

// TestCloseStopsLeaseGrant: a Lock that cannot get a lease (etcd
// unreachable) is stopped by Close, which returns promptly.
func TestCloseStopsLeaseGrant(t *testing.T) {
	proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
	proxy.Blackhole()
	m := newMutex(t, clientVia(t, proxy.URL()), testKey(t))
	errc := make(chan error, 1)
	go func() { errc <- m.Lock(ctxTimeout(t, 30*time.Second)) }()
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	if err := m.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, microlock.ErrClosed) {
			t.Errorf("Lock after Close = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Lock still running 5 s after Close")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close and Lock took %v to stop", d)
	}
}

// TestCloseRevokesLastAttemptLease: after a failed TryLock, Close leaves no
// lease behind (nor the goroutine that renews it: Close waits for it).
func TestCloseRevokesLastAttemptLease(t *testing.T) {
	key := testKey(t)
	ctx := ctxTimeout(t, 10*time.Second)
	holder := newMutex(t, client(t), key)
	if err := holder.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	c := client(t) // a client of its own: no other lock shares its lease
	m := newMutex(t, c, key, microlock.WithTTL(13*time.Second))
	if err := m.TryLock(ctx); !errors.Is(err, microlock.ErrLocked) {
		t.Fatalf("TryLock = %v, want ErrLocked", err)
	}
	ours := leasesWithTTL(t, c, 13)
	if len(ours) == 0 {
		t.Fatal("the failed TryLock left no lease to look at")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	for _, id := range ours {
		resp, err := c.TimeToLive(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if resp.TTL > 0 {
			t.Errorf("lease %x still alive (TTL %d s) after Close", int64(id), resp.TTL)
		}
	}
}

// leasesWithTTL lists the live leases granted for ttl seconds.
func leasesWithTTL(t *testing.T, c *clientv3.Client, ttl int64) []clientv3.LeaseID {
	t.Helper()
	ctx := ctxTimeout(t, 5*time.Second)
	resp, err := c.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []clientv3.LeaseID
	for _, l := range resp.Leases {
		ttlResp, err := c.TimeToLive(ctx, l.ID)
		if err == nil && ttlResp.GrantedTTL == ttl && ttlResp.TTL > 0 {
			ids = append(ids, l.ID)
		}
	}
	return ids
}

// TestCancelCause: a ctx cancelled with a cause of the caller's makes Lock
// and WithLock return an error matching both context.Canceled, as ctx.Err()
// does, and the cause.
func TestCancelCause(t *testing.T) {
	key := testKey(t)
	holder := newMutex(t, client(t), key)
	if err := holder.TryLock(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	cause := errors.New("shutting down")
	check := func(name string, call func(ctx context.Context) error) {
		ctx, cancel := context.WithCancelCause(context.Background())
		time.AfterFunc(300*time.Millisecond, func() { cancel(cause) })
		err := call(ctx)
		if !errors.Is(err, context.Canceled) || !errors.Is(err, cause) {
			t.Errorf("%s = %v, want an error matching context.Canceled and the cause", name, err)
		}
		if errors.Is(err, microlock.ErrLockLost) {
			t.Errorf("%s = %v, must not match ErrLockLost", name, err)
		}
	}
	check("Lock", func(ctx context.Context) error { return newMutex(t, client(t), key).Lock(ctx) })
	check("WithLock", func(ctx context.Context) error {
		return microlock.WithLock(ctx, client(t), key, func(context.Context) error { return nil })
	})
	// Already cancelled: no request is made, and the error is the same.
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(cause)
	check("Lock on a cancelled ctx", func(context.Context) error { return newMutex(t, client(t), key).Lock(ctx) })
}

// TestSharedGrantOutlivesCaller: two acquisitions share one lease grant; the
// one whose ctx ends while the grant is held up must not make the other
// fail.
func TestSharedGrantOutlivesCaller(t *testing.T) {
	cl := etcdtest.Start(t, 1)
	member := cl.Members[0]
	c := cl.Client(t)
	short := newMutex(t, c, testKey(t, "short"))
	long := newMutex(t, c, testKey(t, "long"))

	if err := member.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = member.Resume()
		}
	}()
	shortErr := make(chan error, 1)
	go func() { shortErr <- short.TryLock(ctxTimeout(t, 300*time.Millisecond)) }()
	time.Sleep(50 * time.Millisecond) // short's grant goes out first
	longErr := make(chan error, 1)
	go func() { longErr <- long.TryLock(ctxTimeout(t, 20*time.Second)) }()

	if err := <-shortErr; !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("short TryLock = %v, want DeadlineExceeded", err)
	}
	time.Sleep(200 * time.Millisecond)
	if err := member.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	if err := <-longErr; err != nil {
		t.Fatalf("TryLock sharing the grant of a caller that gave up = %v, want success", err)
	}
}

// TestNoWaitLock: Lock honours NoWait given to New.
func TestNoWaitLock(t *testing.T) {
	key := testKey(t)
	holder := newMutex(t, client(t), key)
	if err := holder.TryLock(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	m := newMutex(t, client(t), key, microlock.NoWait())
	start := time.Now()
	err := m.Lock(ctxTimeout(t, 5*time.Second))
	var already *microlock.AlreadyLockedError
	if !errors.As(err, &already) || already.Token != holder.Token() {
		t.Fatalf("Lock with NoWait = %v, want *AlreadyLockedError naming the holder", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Lock with NoWait took %v", d)
	}
	if keys := keysUnder(t, client(t), key); len(keys) != 1 {
		t.Errorf("keys under the lock after a NoWait Lock: %v, want the holder's only", keys)
	}
}

// blockingHook returns a hook that blocks on the first event of type typ
// until release is called. Call it from a Cleanup registered after the
// Mutex's own, so that it runs before Close, which waits for hooks.
func blockingHook(typ microlock.EventType) (hook func(microlock.Event), release func()) {
	ch := make(chan struct{})
	var once, closeOnce sync.Once
	return func(ev microlock.Event) {
			if ev.Type == typ {
				once.Do(func() { <-ch })
			}
		}, func() {
			closeOnce.Do(func() { close(ch) })
		}
}

// TestSlowRenewedHook: one Mutex's hook that blocks on Renewed must not
// stop the renewals of the lease it shares with other locks.
func TestSlowRenewedHook(t *testing.T) {
	c := client(t)
	ttl := microlock.WithTTL(2 * time.Second)
	hook, release := blockingHook(microlock.Renewed)
	slow := newMutex(t, c, testKey(t, "slow"), ttl, microlock.OnEvent(hook))
	t.Cleanup(release)
	other := newMutex(t, c, testKey(t, "other"), ttl)
	ctx := ctxTimeout(t, 10*time.Second)
	for _, m := range []*microlock.Mutex{slow, other} {
		if err := m.TryLock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(4 * time.Second) // two TTLs
	for name, m := range map[string]*microlock.Mutex{"slow": slow, "other": other} {
		select {
		case <-m.Done():
			t.Errorf("%s lost its lock while a hook blocked: %v", name, m.Err())
		default:
		}
	}
}

// TestSlowLostHook: one Mutex's hook that blocks on Lost must not delay
// another hold's loss signal, nor its Lost event.
func TestSlowLostHook(t *testing.T) {
	c := client(t)
	hook, release := blockingHook(microlock.Lost)
	slow := newMutex(t, c, testKey(t, "slow"), microlock.OnEvent(hook))
	t.Cleanup(release)
	var lostAt time.Time
	var mu sync.Mutex
	other := newMutex(t, c, testKey(t, "other"), microlock.OnEvent(func(ev microlock.Event) {
		if ev.Type == microlock.Lost {
			mu.Lock()
			lostAt = time.Now()
			mu.Unlock()
		}
	}))
	ctx := ctxTimeout(t, 20*time.Second)
	for _, m := range []*microlock.Mutex{slow, other} {
		if err := m.TryLock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second) // both keys watched
	admin := client(t)
	for _, m := range []*microlock.Mutex{slow, other} { // slow's first
		if _, err := admin.Delete(ctx, m.Key()+"/", clientv3.WithPrefix()); err != nil {
			t.Fatal(err)
		}
	}
	deleted := time.Now()
	select {
	case <-other.Done():
	case <-time.After(2 * time.Second):
		t.Fatal("other's Done not closed 2 s after its key was deleted, while slow's hook blocks")
	}
	if !errors.Is(other.Err(), microlock.ErrLockLost) {
		t.Errorf("other.Err() = %v, want ErrLockLost", other.Err())
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		mu.Lock()
		at := lostAt
		mu.Unlock()
		if !at.IsZero() {
			if d := at.Sub(deleted); d > time.Second {
				t.Errorf("other's Lost event came %v after the deletion", d)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("other's Lost event not delivered while slow's hook blocks")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLateEnqueueWrite: a queue write that its Lock gave up on can land
// after the Lock's own cleanup deleted the key, and leave a key that no hold
// owns, on a lease that other locks keep alive: it would block the lock for
// as long as they live. The lease deletes it at its next renewal.
func TestLateEnqueueWrite(t *testing.T) {
	slow := etcdtest.NewProxy(t, shared.Endpoints()[0])
	fast := etcdtest.NewProxy(t, shared.Endpoints()[0])
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{slow.URL(), fast.URL()},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	key := testKey(t)
	ttl := microlock.WithTTL(3 * time.Second)
	ctx := ctxTimeout(t, 60*time.Second)
	holder := newMutex(t, client(t), key)
	if err := holder.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	events := client(t).Watch(ctx, key+"/", clientv3.WithPrefix())
	// Each request goes to the next endpoint in turn: the queue write goes
	// through the slow proxy in about half the tries, and the cleanup's
	// delete through the fast one.
	for try := 1; try <= 20; try++ {
		// Another lock of the same client and TTL keeps the lease in use,
		// as in a process that holds many locks. (A lease whose write was
		// lost is retired: each try takes a new one.)
		keeper := newMutex(t, c, testKey(t, "keeper", strconv.Itoa(try)), ttl)
		if err := keeper.TryLock(ctx); err != nil {
			t.Fatal(err)
		}
		slow.Delay(1500 * time.Millisecond)
		m := newMutex(t, c, key, ttl)
		lctx, cancel := context.WithTimeout(ctx, 400*time.Millisecond)
		err := m.Lock(lctx)
		cancel()
		slow.Delay(0)
		if err == nil {
			t.Fatal("Lock succeeded while another node holds the lock")
		}
		// Every event up to now happened before Lock returned.
		drain := time.After(100 * time.Millisecond)
	before:
		for {
			select {
			case <-events:
			case <-drain:
				break before
			}
		}
		// A put from now on is a write that landed after its Lock gave up.
		var stray string
		var putAt time.Time
		timeout := time.After(4 * time.Second)
	watch:
		for {
			select {
			case wr := <-events:
				for _, ev := range wr.Events {
					switch {
					case ev.Type == mvccpb.PUT && stray == "":
						stray, putAt = string(ev.Kv.Key), time.Now()
						t.Logf("try %d: a queue write landed after its Lock gave up", try)
					case ev.Type == mvccpb.DELETE && string(ev.Kv.Key) == stray:
						// The lease renews every TTL/3 = 1 s.
						if d := time.Since(putAt); d > 2*time.Second {
							t.Errorf("the stray key went %v after it landed", d)
						}
						return
					}
				}
			case <-timeout:
				break watch
			}
		}
		if stray != "" {
			t.Fatalf("the stray key %q is still there 4 s after it landed; keys: %v", stray, keysUnder(t, client(t), key))
		}
		t.Logf("try %d: Lock: %v; no late write", try, err)
	}
	t.Fatal("no queue write landed late in 20 tries")
}
