package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/microlock/microlock"
)

// TestRoundTripBudget counts the etcd requests of each operation on a client
// whose lease is already granted: TryLock one (success and failure), Unlock
// one, uncontended Lock one, WithLock two.
func TestRoundTripBudget(t *testing.T) {
	c, rc := countingClient(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 20*time.Second)
	m := newMutex(t, c, key)
	other := newMutex(t, client(t), key)

	// Warm up: the first lock grants the client's lease.
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	rc.snapshot()

	expect := func(what string, want int) {
		t.Helper()
		got := rc.snapshot()
		total := 0
		for _, n := range got {
			total += n
		}
		if total != want {
			t.Errorf("%s: %d requests %v, want %d", what, total, got, want)
		}
	}
	if err := m.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	expect("TryLock (success)", 1)
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	expect("Unlock", 1)
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	expect("Lock (uncontended)", 1)
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	rc.snapshot()

	if err := other.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.TryLock(ctx); !errors.Is(err, microlock.ErrLocked) {
		t.Fatalf("TryLock = %v, want ErrLocked", err)
	}
	expect("TryLock (failure)", 1)
	if err := other.Unlock(ctx); err != nil {
		t.Fatal(err)
	}

	for range 5 {
		if err := microlock.WithLock(ctx, c, key, func(context.Context) error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	expect("5 × WithLock", 10)
}

// TestRenewalPerLease: renewal work grows with leases, not locks. Holding
// 1 lock or 200 on one client sends the same keepalives.
func TestRenewalPerLease(t *testing.T) {
	const ttl = 3 * time.Second
	count := func(locks int) int {
		c, rc := countingClient(t)
		ctx := ctxTimeout(t, 60*time.Second)
		var ms []*microlock.Mutex
		for i := range locks {
			m := newMutex(t, c, testKey(t, fmt.Sprint(locks), fmt.Sprint(i)), microlock.WithTTL(ttl))
			if err := m.Lock(ctx); err != nil {
				t.Fatal(err)
			}
			ms = append(ms, m)
		}
		rc.snapshot()
		time.Sleep(2 * ttl)
		n := rc.snapshot()["LeaseKeepAlive"]
		for _, m := range ms {
			if err := m.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return n
	}
	one, many := count(1), count(200)
	t.Logf("keepalive requests in 2×TTL: %d with 1 lock, %d with 200", one, many)
	if one < 5 || one > 7 {
		t.Fatalf("%d keepalives in 2×TTL with one lock, want about 6 (every TTL/3)", one)
	}
	if many > one+1 {
		t.Fatalf("%d keepalives with 200 locks vs %d with one: renewal grows with locks", many, one)
	}
}
