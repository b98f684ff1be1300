package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/microlock/microlock"
)

func TestWithLockRunsFnAndReleases(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 10*time.Second)
	log := &eventLog{}
	ran := false
	err := microlock.WithLock(ctx, c, key, func(ctx context.Context) error {
		ran = true
		m, ok := microlock.FromContext(ctx)
		if !ok || m.Key() != key || m.Token() <= 0 {
			return fmt.Errorf("FromContext = %v, %v", m, ok)
		}
		if keys := keysUnder(t, c, key); len(keys) != 1 {
			return fmt.Errorf("keys while held: %q", keys)
		}
		if err := microlock.WithLock(ctx, c, key, func(context.Context) error { return nil }, microlock.NoWait()); !errors.Is(err, microlock.ErrLocked) {
			return fmt.Errorf("NoWait WithLock while held = %v, want ErrLocked", err)
		}
		return nil
	}, microlock.WithNodeID("runner"), microlock.OnEvent(log.hook))
	if err != nil || !ran {
		t.Fatalf("WithLock = %v (ran %v)", err, ran)
	}
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("keys after WithLock: %q", keys)
	}
	if log.count(microlock.Acquired) != 1 || log.count(microlock.Released) != 1 {
		t.Fatalf("events %+v, want one Acquired and one Released", log.events)
	}
	if ev := log.of(microlock.Acquired)[0]; ev.Key != key || ev.Holder != "runner" || ev.Token <= 0 {
		t.Fatalf("Acquired event %+v", ev)
	}
}

func TestWithLockReturnsFnError(t *testing.T) {
	c := client(t)
	boom := errors.New("boom")
	err := microlock.WithLock(ctxTimeout(t, 10*time.Second), c, testKey(t), func(context.Context) error { return boom })
	if err != boom {
		t.Fatalf("WithLock = %v, want fn's error as it is", err)
	}
	if keys := keysUnder(t, c, testKey(t)); len(keys) != 0 {
		t.Fatalf("keys after WithLock: %q", keys)
	}
}

func TestWithLockReleasesOnPanic(t *testing.T) {
	c := client(t)
	key := testKey(t)
	type payload struct{ n int }
	want := &payload{42}
	func() {
		defer func() {
			if got := recover(); got != want {
				t.Fatalf("recovered %v, want the very value fn panicked with", got)
			}
		}()
		_ = microlock.WithLock(ctxTimeout(t, 10*time.Second), c, key, func(context.Context) error { panic(want) })
	}()
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("keys after a panic in fn: %q", keys)
	}
}

func TestWithLockReleasesWhenCallerCancelled(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx, cancel := context.WithCancel(context.Background())
	err := microlock.WithLock(ctx, c, key, func(ctx context.Context) error {
		cancel()
		<-ctx.Done()
		if cause := context.Cause(ctx); errors.Is(cause, microlock.ErrLockLost) {
			return fmt.Errorf("cancel by caller reported as loss: %v", cause)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("WithLock = %v", err)
	}
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("keys after WithLock with a cancelled ctx: %q", keys)
	}
}

func TestWithLockWaitCancelled(t *testing.T) {
	c := client(t)
	key := testKey(t)
	holder := newMutex(t, c, key)
	if err := holder.Lock(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err := microlock.WithLock(ctx, c, key, func(context.Context) error {
		return errors.New("fn ran without the lock")
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WithLock = %v, want DeadlineExceeded", err)
	}
	if keys := keysUnder(t, c, key); len(keys) != 1 {
		t.Fatalf("queue after a cancelled WithLock: %q", keys)
	}
}

// TestWithLockNoWait: NoWait fails at once with the holder's details.
func TestWithLockNoWait(t *testing.T) {
	c := client(t)
	key := testKey(t)
	holder := newMutex(t, c, key, microlock.WithNodeID("holder"))
	if err := holder.Lock(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	err := microlock.WithLock(ctxTimeout(t, 5*time.Second), c, key, func(context.Context) error {
		return errors.New("fn ran without the lock")
	}, microlock.NoWait())
	var ale *microlock.AlreadyLockedError
	if !errors.As(err, &ale) || ale.Holder != "holder" || ale.Token != holder.Token() {
		t.Fatalf("WithLock(NoWait) = %v, want *AlreadyLockedError naming holder", err)
	}
}

// TestContentionCounter is property 7: 8 clients × 25 WithLock rounds of a
// deliberately non-atomic read-modify-write end with the exact count, and no
// two holders are ever inside at once.
func TestContentionCounter(t *testing.T) {
	const clients, rounds = 8, 25
	key := testKey(t)
	counter := testKey(t, "counter")
	ctx := ctxTimeout(t, 120*time.Second)
	var g gauge
	var eg errgroup.Group
	for i := range clients {
		c := client(t)
		eg.Go(func() error {
			for range rounds {
				err := microlock.WithLock(ctx, c, key, func(ctx context.Context) error {
					g.enter()
					defer g.exit()
					return incrementSlowly(ctx, c, counter)
				}, microlock.WithNodeID(fmt.Sprintf("client-%d", i)))
				if err != nil {
					return fmt.Errorf("client %d: %w", i, err)
				}
			}
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := readCounter(t, client(t), counter); got != clients*rounds {
		t.Fatalf("counter = %d, want %d: updates were lost", got, clients*rounds)
	}
	if m := g.max.Load(); m != 1 {
		t.Fatalf("saw %d holders at once", m)
	}
}

// TestMutualExclusionSharedClient: many Mutex values on one client, so one
// shared lease, still exclude each other.
func TestMutualExclusionSharedClient(t *testing.T) {
	const workers, rounds = 10, 15
	c := client(t)
	key := testKey(t)
	counter := testKey(t, "counter")
	ctx := ctxTimeout(t, 120*time.Second)
	var g gauge
	var eg errgroup.Group
	for i := range workers {
		m := newMutex(t, c, key)
		eg.Go(func() error {
			for range rounds {
				if err := m.Lock(ctx); err != nil {
					return fmt.Errorf("worker %d: %w", i, err)
				}
				g.enter()
				err := incrementSlowly(ctx, c, counter)
				g.exit()
				if uerr := m.Unlock(ctx); err == nil {
					err = uerr
				}
				if err != nil {
					return fmt.Errorf("worker %d: %w", i, err)
				}
			}
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := readCounter(t, c, counter); got != workers*rounds {
		t.Fatalf("counter = %d, want %d", got, workers*rounds)
	}
	if m := g.max.Load(); m != 1 {
		t.Fatalf("saw %d holders at once", m)
	}
}

// incrementSlowly reads the counter, waits, and writes it plus one: safe only
// under mutual exclusion.
func incrementSlowly(ctx context.Context, c *clientv3.Client, counter string) error {
	resp, err := c.Get(ctx, counter)
	if err != nil {
		return err
	}
	n := 0
	if len(resp.Kvs) > 0 {
		if n, err = strconv.Atoi(string(resp.Kvs[0].Value)); err != nil {
			return err
		}
	}
	time.Sleep(2 * time.Millisecond)
	_, err = c.Put(ctx, counter, strconv.Itoa(n+1))
	return err
}

func readCounter(t testing.TB, c *clientv3.Client, counter string) int {
	t.Helper()
	resp, err := c.Get(ctxTimeout(t, 5*time.Second), counter)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	n, err := strconv.Atoi(string(resp.Kvs[0].Value))
	if err != nil {
		t.Fatal(err)
	}
	return n
}
