package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/microlock/microlock"
)

func TestTryLockReportsHolder(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 10*time.Second)
	a := newMutex(t, c, key, microlock.WithNodeID("node-a"))
	b := newMutex(t, c, key, microlock.WithNodeID("node-b"))

	if err := a.TryLock(ctx); err != nil {
		t.Fatalf("a.TryLock: %v", err)
	}
	err := b.TryLock(ctx)
	var ale *microlock.AlreadyLockedError
	if !errors.As(err, &ale) || !errors.Is(err, microlock.ErrLocked) {
		t.Fatalf("b.TryLock = %v, want *AlreadyLockedError matching ErrLocked", err)
	}
	if ale.Key != key || ale.Holder != "node-a" || ale.Token != a.Token() {
		t.Fatalf("AlreadyLockedError = %+v, want key %q holder node-a token %d", *ale, key, a.Token())
	}
	// The failed attempt leaves nothing behind: only a's key is queued.
	if keys := keysUnder(t, c, key); len(keys) != 1 {
		t.Fatalf("keys after a failed TryLock: %q, want a's only", keys)
	}
	// A second TryLock by the holder itself says who holds it: this node.
	if err := a.TryLock(ctx); !errors.As(err, &ale) || ale.Holder != "node-a" {
		t.Fatalf("a.TryLock while held = %v, want *AlreadyLockedError naming node-a", err)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatalf("a.Unlock: %v", err)
	}
	if err := b.TryLock(ctx); err != nil {
		t.Fatalf("b.TryLock after a.Unlock: %v", err)
	}
	if got := b.Token(); got <= ale.Token {
		t.Fatalf("b's token %d is not above a's %d", got, ale.Token)
	}
}

func TestUnlockNotOwner(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 10*time.Second)
	a := newMutex(t, c, key)
	b := newMutex(t, c, key)
	if err := a.Unlock(ctx); !errors.Is(err, microlock.ErrNotOwner) {
		t.Fatalf("Unlock before any Lock = %v, want ErrNotOwner", err)
	}
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	// Another Mutex with the same node ID still does not own a's hold.
	if err := b.Unlock(ctx); !errors.Is(err, microlock.ErrNotOwner) {
		t.Fatalf("b.Unlock of a's hold = %v, want ErrNotOwner", err)
	}
	if err := b.Renew(ctx); !errors.Is(err, microlock.ErrNotOwner) {
		t.Fatalf("b.Renew of a's hold = %v, want ErrNotOwner", err)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(ctx); !errors.Is(err, microlock.ErrNotOwner) {
		t.Fatalf("second Unlock = %v, want ErrNotOwner", err)
	}
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("keys after Unlock: %q", keys)
	}
}

func TestDoneErrTokenLifecycle(t *testing.T) {
	c := client(t)
	ctx := ctxTimeout(t, 10*time.Second)
	m := newMutex(t, c, testKey(t))
	select {
	case <-m.Done():
	default:
		t.Fatal("Done before any hold is not closed")
	}
	if m.Err() != nil || m.Token() != 0 {
		t.Fatalf("before any hold: Err %v, Token %d", m.Err(), m.Token())
	}
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	done := m.Done()
	select {
	case <-done:
		t.Fatal("Done closed while held")
	default:
	}
	if m.Err() != nil || m.Token() <= 0 {
		t.Fatalf("while held: Err %v, Token %d", m.Err(), m.Token())
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	default:
		t.Fatal("Done not closed after Unlock")
	}
	if m.Err() != nil || m.Token() != 0 {
		t.Fatalf("after Unlock: Err %v, Token %d", m.Err(), m.Token())
	}
}

func TestLockWaitsInArrivalOrder(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	first := newMutex(t, c, key)
	if err := first.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 5
	var mu sync.Mutex
	var order []int
	var eg errgroup.Group
	for i := range n {
		m := newMutex(t, c, key)
		eg.Go(func() error {
			if err := m.Lock(ctx); err != nil {
				return fmt.Errorf("waiter %d: %w", i, err)
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			if err := m.Unlock(ctx); err != nil {
				return fmt.Errorf("waiter %d Unlock: %w", i, err)
			}
			return nil
		})
		// Wait until waiter i is queued before starting the next one.
		for len(keysUnder(t, c, key)) != i+2 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := first.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := eg.Wait(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(order, []int{0, 1, 2, 3, 4}) {
		t.Fatalf("waiters acquired in order %v, want arrival order", order)
	}
}

func TestWaiterCancelLeavesQueue(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 20*time.Second)
	holder := newMutex(t, c, key)
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}

	t.Run("deadline", func(t *testing.T) {
		w := newMutex(t, c, key)
		wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		err := w.Lock(wctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Lock = %v, want DeadlineExceeded", err)
		}
		if keys := keysUnder(t, c, key); len(keys) != 1 {
			t.Fatalf("queue after a cancelled waiter: %q, want the holder's key only", keys)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		w := newMutex(t, c, key)
		wctx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() { errc <- w.Lock(wctx) }()
		for len(keysUnder(t, c, key)) != 2 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatalf("Lock = %v, want Canceled", err)
		}
		if keys := keysUnder(t, c, key); len(keys) != 1 {
			t.Fatalf("queue after a cancelled waiter: %q", keys)
		}
	})
	t.Run("close", func(t *testing.T) {
		w := newMutex(t, c, key)
		errc := make(chan error, 1)
		go func() { errc <- w.Lock(ctx) }()
		for len(keysUnder(t, c, key)) != 2 {
			time.Sleep(5 * time.Millisecond)
		}
		if err := w.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := <-errc; err == nil {
			t.Fatal("Lock returned nil after Close")
		}
		if keys := keysUnder(t, c, key); len(keys) != 1 {
			t.Fatalf("queue after Close of a waiter: %q", keys)
		}
		if err := w.Lock(ctx); !errors.Is(err, microlock.ErrClosed) {
			t.Fatalf("Lock after Close = %v, want ErrClosed", err)
		}
	})
	// The holder is unaffected, and the queue works on.
	next := newMutex(t, c, key)
	errc := make(chan error, 1)
	go func() { errc <- next.Lock(ctx) }()
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("next waiter: %v", err)
	}
}

func TestWaiterOwnKeyVanishes(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 20*time.Second)
	holder := newMutex(t, c, key)
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	w := newMutex(t, c, key)
	errc := make(chan error, 1)
	go func() { errc <- w.Lock(ctx) }()
	var waiterKey string
	for waiterKey == "" {
		for _, k := range keysUnder(t, c, key) {
			if k != holderKey(t, c, key) {
				waiterKey = k
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := c.Delete(ctx, waiterKey); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, microlock.ErrLockLost) {
			t.Fatalf("Lock after its key was deleted = %v, want ErrLockLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("waiter whose key was deleted is still waiting")
	}
}

// holderKey is the key with the smallest create revision under key's prefix.
func holderKey(t testing.TB, c *clientv3.Client, key string) string {
	t.Helper()
	resp, err := c.Get(ctxTimeout(t, 5*time.Second), key+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Key)
}

func TestExternalDeleteOrRevokeIsLoss(t *testing.T) {
	for _, tc := range []struct {
		name  string
		after time.Duration // how long the lock is held before the attack
		kill  func(ctx context.Context, c *clientv3.Client, kv *holderKV) error
	}{
		{"delete-at-once", 0, deleteKey},
		{"delete-later", 1500 * time.Millisecond, deleteKey},
		{"revoke-at-once", 0, revokeLease},
		{"revoke-later", 1500 * time.Millisecond, revokeLease},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := client(t)
			key := testKey(t)
			ctx := ctxTimeout(t, 20*time.Second)
			log := &eventLog{}
			m := newMutex(t, c, key, microlock.WithTTL(5*time.Second), microlock.OnEvent(log.hook))
			if err := m.Lock(ctx); err != nil {
				t.Fatal(err)
			}
			time.Sleep(tc.after)
			kv := readHolder(t, c, key)
			start := time.Now()
			if err := tc.kill(ctx, c, kv); err != nil {
				t.Fatal(err)
			}
			select {
			case <-m.Done():
			case <-time.After(time.Second):
				t.Fatal("loss not noticed within one second")
			}
			t.Logf("loss noticed after %v", time.Since(start))
			if err := m.Err(); !errors.Is(err, microlock.ErrLockLost) {
				t.Fatalf("Err = %v, want ErrLockLost", err)
			}
			if m.Token() != 0 {
				t.Fatalf("Token after loss = %d", m.Token())
			}
			// The Lost event follows the loss signal, from the goroutine
			// that noticed it.
			for deadline := time.Now().Add(time.Second); log.count(microlock.Lost) == 0 && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
			if n := log.count(microlock.Lost); n != 1 {
				t.Fatalf("%d Lost events, want 1", n)
			}
			if err := m.Unlock(ctx); !errors.Is(err, microlock.ErrNotOwner) || !errors.Is(err, microlock.ErrLockLost) {
				t.Fatalf("Unlock after loss = %v, want ErrNotOwner and ErrLockLost", err)
			}
			// The Mutex can take the lock again.
			if err := m.Lock(ctx); err != nil {
				t.Fatalf("Lock after loss: %v", err)
			}
			if err := m.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

type holderKV struct {
	key   string
	lease clientv3.LeaseID
}

func readHolder(t testing.TB, c *clientv3.Client, key string) *holderKV {
	t.Helper()
	resp, err := c.Get(ctxTimeout(t, 5*time.Second), key+"/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("reading the holder of %q: %v (%d keys)", key, err, len(resp.Kvs))
	}
	return &holderKV{string(resp.Kvs[0].Key), clientv3.LeaseID(resp.Kvs[0].Lease)}
}

func deleteKey(ctx context.Context, c *clientv3.Client, kv *holderKV) error {
	_, err := c.Delete(ctx, kv.key)
	return err
}

func revokeLease(ctx context.Context, c *clientv3.Client, kv *holderKV) error {
	_, err := c.Revoke(ctx, kv.lease)
	return err
}

func TestTokensIncreaseAndFence(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 20*time.Second)
	a := newMutex(t, c, key)
	b := newMutex(t, c, key)
	register := testKey(t, "register")

	// write puts v in the register only while m's hold lasts.
	write := func(cmp clientv3.Cmp, v string) bool {
		resp, err := c.Txn(ctx).If(cmp).Then(clientv3.OpPut(register, v)).Commit()
		if err != nil {
			t.Fatal(err)
		}
		return resp.Succeeded
	}

	var last int64
	for i := range 6 {
		m := a
		if i%2 == 1 {
			m = b
		}
		if err := m.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		tok := m.Token()
		if tok <= last {
			t.Fatalf("hold %d: token %d not above the previous %d", i, tok, last)
		}
		last = tok
		stale := m.IsOwner()
		if !write(stale, fmt.Sprint(i)) {
			t.Fatalf("hold %d: a write guarded by IsOwner failed while held", i)
		}
		if err := m.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		if write(stale, "stale") {
			t.Fatalf("hold %d: a write guarded by the released hold's IsOwner landed", i)
		}
		if write(m.IsOwner(), "stale") {
			t.Fatalf("hold %d: a write guarded by IsOwner without a hold landed", i)
		}
	}

	// A holder that lost its hold cannot write, even if it still tries.
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	stale, staleTok := a.IsOwner(), a.Token()
	kv := readHolder(t, c, key)
	if err := revokeLease(ctx, c, kv); err != nil {
		t.Fatal(err)
	}
	if err := b.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if write(stale, "stale") {
		t.Fatal("a write guarded by a lost hold's IsOwner landed")
	}
	if !write(b.IsOwner(), "b") {
		t.Fatal("the new holder's guarded write failed")
	}
	if b.Token() <= staleTok {
		t.Fatalf("token after takeover %d not above the lost hold's %d", b.Token(), staleTok)
	}
}

func TestRenewAndRenewalKeepHold(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	log := &eventLog{}
	m := newMutex(t, c, key, microlock.WithTTL(2*time.Second), microlock.OnEvent(log.hook))
	other := newMutex(t, c, key)
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	tok := m.Token()
	// Hold for more than three TTLs (etcd may grant more than 2 s; the
	// holds's renewal works with what it grants).
	deadline := time.Now().Add(7 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-m.Done():
			t.Fatalf("hold ended while etcd was healthy: %v", m.Err())
		case <-time.After(500 * time.Millisecond):
		}
		if err := other.TryLock(ctx); !errors.Is(err, microlock.ErrLocked) {
			t.Fatalf("TryLock by another Mutex = %v, want ErrLocked", err)
		}
	}
	if err := m.Renew(ctx); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if m.Token() != tok {
		t.Fatalf("token changed while held: %d → %d", tok, m.Token())
	}
	if n := log.count(microlock.Renewed); n < 4 {
		t.Fatalf("%d Renewed events in 7 s with a 2 s TTL, want at least 4", n)
	}
	if n := log.count(microlock.Lost); n != 0 {
		t.Fatalf("%d Lost events while etcd was healthy", n)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if n := log.count(microlock.Acquired); n != 1 || log.count(microlock.Released) != 1 {
		t.Fatalf("events: %d Acquired, %d Released; want 1 and 1", n, log.count(microlock.Released))
	}
}
