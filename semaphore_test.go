package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

// queueLen waits until key's queue has n keys: a waiter has enqueued.
func queueLen(t *testing.T, c *clientv3.Client, key string, n int) {
	t.Helper()
	for range 500 {
		if len(keysUnder(t, c, key)) == n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%q: want %d keys in the queue, have %v", key, n, keysUnder(t, c, key))
}

// notYet fails the test if a, an acquisition under way, has returned.
func notYet(t *testing.T, what string, got <-chan error) {
	t.Helper()
	select {
	case err := <-got:
		t.Fatalf("%s returned %v while it should wait", what, err)
	case <-time.After(200 * time.Millisecond):
	}
}

// lockAsync starts m.Lock(ctx) and returns its result channel.
func lockAsync(ctx context.Context, m *microlock.Mutex) <-chan error {
	got := make(chan error, 1)
	go func() { got <- m.Lock(ctx) }()
	return got
}

// TestSemaphoreAdmitsExactlyLimit: limit 3 admits three holders and not a
// fourth; a refused TryLock leaves no key; the fourth Lock waits and holds
// when one of the three lets go; Holder reports every holder.
func TestSemaphoreAdmitsExactlyLimit(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	var ms []*microlock.Mutex
	for i := range 4 {
		ms = append(ms, newMutex(t, c, key, microlock.WithLimit(3), microlock.WithNodeID(fmt.Sprint("n", i))))
	}
	for i := range 3 {
		if err := ms[i].TryLock(ctx); err != nil {
			t.Fatalf("TryLock %d of 3: %v", i, err)
		}
	}
	err := ms[3].TryLock(ctx)
	var ale *microlock.AlreadyLockedError
	if !errors.As(err, &ale) || ale.Holder != "n0" || ale.Token != ms[0].Token() {
		t.Fatalf("fourth TryLock = %v, want *AlreadyLockedError naming n0 (token %d)", err, ms[0].Token())
	}
	if keys := keysUnder(t, c, key); len(keys) != 3 {
		t.Fatalf("after a refused TryLock the queue is %v, want the three holders' keys", keys)
	}
	ev, err := microlock.Holder(ctx, c, key)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != microlock.Locked || ev.Holders != 3 || len(ev.HeldBy) != 3 || ev.HeldBy[2].Holder != "n2" ||
		ev.HeldBy[2].Token != ms[2].Token() || ev.Holder != "n0" {
		t.Fatalf("Holder = %+v, want Locked by n0, n1, n2", ev)
	}
	got := lockAsync(ctx, ms[3])
	queueLen(t, c, key, 4)
	notYet(t, "the fourth Lock", got)
	if err := ms[1].Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("the fourth Lock after a release: %v", err)
	}
	ev, err = microlock.Holder(ctx, c, key)
	if err != nil || ev.Holders != 3 || ev.HeldBy[2].Holder != "n3" {
		t.Fatalf("Holder = %+v, %v; want n0, n2, n3", ev, err)
	}
}

// TestSemaphoreFIFO: waiters are admitted in arrival order, as permits free
// up one at a time.
func TestSemaphoreFIFO(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 60*time.Second)
	const limit, waiters = 2, 5
	var holders []*microlock.Mutex
	for range limit {
		m := newMutex(t, c, key, microlock.WithLimit(limit))
		if err := m.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		holders = append(holders, m)
	}
	order := make(chan int, waiters)
	ws := make([]*microlock.Mutex, waiters)
	var wg sync.WaitGroup
	for i := range waiters {
		ws[i] = newMutex(t, c, key, microlock.WithLimit(limit))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := ws[i].Lock(ctx); err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			order <- i
		}()
		queueLen(t, c, key, limit+i+1) // i has enqueued before i+1 starts
	}
	// Free one permit at a time: each release admits exactly the next
	// waiter in arrival order.
	all := append(holders, ws...)
	for i := range waiters {
		release := all[i] // the oldest holder
		if err := release.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		if got := <-order; got != i {
			t.Fatalf("admission %d went to waiter %d", i, got)
		}
	}
	wg.Wait()
}

// TestSemaphoreUnderContention: never more than limit holders at once,
// however many contend, with WithLock.
func TestSemaphoreUnderContention(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 60*time.Second)
	const limit, workers, rounds = 3, 8, 5
	var g gauge
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				err := microlock.WithLock(ctx, c, key, func(context.Context) error {
					g.enter()
					time.Sleep(5 * time.Millisecond)
					g.exit()
					return nil
				}, microlock.WithLimit(limit))
				if err != nil {
					t.Errorf("worker %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if m := g.max.Load(); m > limit {
		t.Fatalf("saw %d holders at once, limit %d", m, limit)
	}
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("keys left behind: %v", keys)
	}
}

// TestSemaphoreMismatch: a lock that disagrees with the queued keys' rule
// is refused at acquisition, with ErrMismatch, and leaves no key behind.
func TestSemaphoreMismatch(t *testing.T) {
	c := client(t)
	ctx := ctxTimeout(t, 30*time.Second)
	cases := []struct {
		name        string
		first, then []microlock.Option
	}{
		{"limit 3 then limit 2", []microlock.Option{microlock.WithLimit(3)}, []microlock.Option{microlock.WithLimit(2)}},
		{"limit 2 then limit 3", []microlock.Option{microlock.WithLimit(2)}, []microlock.Option{microlock.WithLimit(3)}},
		{"limit 3 then limit 30", []microlock.Option{microlock.WithLimit(3)}, []microlock.Option{microlock.WithLimit(30)}},
		{"semaphore then Mutex", []microlock.Option{microlock.WithLimit(3)}, nil},
		{"semaphore then limit 1", []microlock.Option{microlock.WithLimit(3)}, []microlock.Option{microlock.WithLimit(1)}},
		{"semaphore then Shared", []microlock.Option{microlock.WithLimit(3)}, []microlock.Option{microlock.Shared()}},
		{"Shared then semaphore", []microlock.Option{microlock.Shared()}, []microlock.Option{microlock.WithLimit(3)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := testKey(t)
			first := newMutex(t, c, key, tc.first...)
			if err := first.Lock(ctx); err != nil {
				t.Fatal(err)
			}
			for _, op := range []string{"Lock", "TryLock", "WithLock"} {
				m := newMutex(t, c, key, tc.then...)
				var err error
				switch op {
				case "Lock":
					err = m.Lock(ctx)
				case "TryLock":
					err = m.TryLock(ctx)
				default:
					err = microlock.WithLock(ctx, c, key, func(context.Context) error {
						t.Error("fn ran on a refused lock")
						return nil
					}, tc.then...)
				}
				if !errors.Is(err, microlock.ErrMismatch) || !strings.HasPrefix(err.Error(), "microlock: ") {
					t.Fatalf("%s = %v, want ErrMismatch", op, err)
				}
				if keys := keysUnder(t, c, key); len(keys) != 1 {
					t.Fatalf("after a refused %s the queue is %v, want the first holder's key only", op, keys)
				}
			}
		})
	}
}

// TestAdmissionOptionsRejected: bad combinations are refused before any
// I/O (the client here has no reachable endpoint).
func TestAdmissionOptionsRejected(t *testing.T) {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxTimeout(t, 5*time.Second)
	for name, opts := range map[string][]microlock.Option{
		"limit 0":          {microlock.WithLimit(0)},
		"limit -1":         {microlock.WithLimit(-1)},
		"limit too high":   {microlock.WithLimit(microlock.MaxLimit + 1)},
		"limit and shared": {microlock.WithLimit(2), microlock.Shared()},
		"shared and limit": {microlock.Shared(), microlock.WithLimit(1)},
	} {
		if _, err := microlock.New(c, "k", opts...); err == nil || !strings.HasPrefix(err.Error(), "microlock: ") {
			t.Errorf("New with %s = %v, want a microlock: error", name, err)
		}
		err := microlock.WithLock(ctx, c, "k", func(context.Context) error { return nil }, opts...)
		if err == nil || !strings.HasPrefix(err.Error(), "microlock: ") {
			t.Errorf("WithLock with %s = %v, want a microlock: error", name, err)
		}
	}
}

// TestSemaphoreWaiterKeyDeleted: a waiter whose own key is deleted stops
// waiting at once with ErrLockLost, while its permits are all taken.
func TestSemaphoreWaiterKeyDeleted(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	for range 2 {
		if err := newMutex(t, c, key, microlock.WithLimit(2)).Lock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	w := newMutex(t, c, key, microlock.WithLimit(2))
	got := lockAsync(ctx, w)
	queueLen(t, c, key, 3)
	resp, err := c.Get(ctx, key+"/", clientv3.WithLastCreate()...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx, string(resp.Kvs[0].Key)); err != nil {
		t.Fatal(err)
	}
	if err := <-got; !errors.Is(err, microlock.ErrLockLost) {
		t.Fatalf("Lock after its key was deleted = %v, want ErrLockLost", err)
	}
}

// TestSemaphoreWatchCounts: Watch reports how many hold a semaphore, one
// event per change.
func TestSemaphoreWatchCounts(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	events, err := microlock.Watch(ctx, c, key)
	if err != nil {
		t.Fatal(err)
	}
	next := func() microlock.Event {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-ctx.Done():
			t.Fatal("no event")
			return microlock.Event{}
		}
	}
	if ev := next(); ev.Type != microlock.Unlocked || ev.Holders != 0 {
		t.Fatalf("first event %+v, want Unlocked", ev)
	}
	var ms []*microlock.Mutex
	for i := 1; i <= 3; i++ {
		m := newMutex(t, c, key, microlock.WithLimit(3))
		if err := m.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
		if ev := next(); ev.Type != microlock.Locked || ev.Holders != i || ev.Token != ms[0].Token() {
			t.Fatalf("after %d acquisitions: %+v", i, ev)
		}
	}
	if err := ms[0].Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := next(); ev.Holders != 2 || ev.Token != ms[1].Token() {
		t.Fatalf("after a release: %+v, want 2 holders, the oldest %d", ev, ms[1].Token())
	}
}

// TestLimitOneIsMutex: WithLimit(1) is the ordinary Mutex: the same key
// name, and the same exclusion of a plain Mutex and of etcd's Mutex, in
// both directions, with no ErrMismatch.
func TestLimitOneIsMutex(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	one := newMutex(t, c, key, microlock.WithLimit(1), microlock.WithNodeID("one"))
	plain := newMutex(t, c, key, microlock.WithNodeID("plain"))
	if err := one.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	keys := keysUnder(t, c, key)
	if len(keys) != 1 || strings.Contains(keys[0], "~") {
		t.Fatalf("WithLimit(1)'s key is %v, want a plain Mutex's", keys)
	}
	var ale *microlock.AlreadyLockedError
	if err := plain.TryLock(ctx); !errors.As(err, &ale) || ale.Holder != "one" {
		t.Fatalf("a Mutex's TryLock under WithLimit(1) = %v, want *AlreadyLockedError naming it", err)
	}
	got := lockAsync(ctx, plain)
	queueLen(t, c, key, 2)
	notYet(t, "the Mutex's Lock", got)
	if err := one.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if err := one.TryLock(ctx); !errors.As(err, &ale) || ale.Holder != "plain" {
		t.Fatalf("WithLimit(1)'s TryLock under a Mutex = %v, want *AlreadyLockedError naming it", err)
	}
}

// TestSemaphoreNoWaitAndIsOwner: WithLock with NoWait fails at once on a
// full semaphore; each permit's IsOwner guards writes while it holds, and
// fails once it let go; tokens tell the holds apart.
func TestSemaphoreNoWaitAndIsOwner(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	a := newMutex(t, c, key, microlock.WithLimit(2))
	b := newMutex(t, c, key, microlock.WithLimit(2))
	for _, m := range []*microlock.Mutex{a, b} {
		if err := m.Lock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if a.Token() == b.Token() || a.Token() == 0 {
		t.Fatalf("tokens %d and %d, want two distinct holds", a.Token(), b.Token())
	}
	err := microlock.WithLock(ctx, c, key, func(context.Context) error {
		t.Error("fn ran on a full semaphore")
		return nil
	}, microlock.WithLimit(2), microlock.NoWait())
	if !errors.Is(err, microlock.ErrLocked) {
		t.Fatalf("WithLock with NoWait on a full semaphore = %v, want ErrLocked", err)
	}
	guarded := func(m *microlock.Mutex) bool {
		resp, err := c.Txn(ctx).If(m.IsOwner()).Then(clientv3.OpPut(testKey(t, "data"), "x")).Commit()
		if err != nil {
			t.Fatal(err)
		}
		return resp.Succeeded
	}
	guard := a.IsOwner()
	if !guarded(a) || !guarded(b) {
		t.Fatal("a guarded write of a permit holder was refused")
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Txn(ctx).If(guard).Then(clientv3.OpPut(testKey(t, "data"), "late")).Commit()
	if err != nil || resp.Succeeded || guarded(a) || !guarded(b) {
		t.Fatalf("after a's release: a's guard taken while it held succeeded %v (%v), a %v, b %v; want only b's",
			resp != nil && resp.Succeeded, err, guarded(a), guarded(b))
	}
}
