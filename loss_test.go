package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// clientVia returns a client whose only endpoint is url (a proxy), closed
// at the end of the test.
func clientVia(t testing.TB, url string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestLossSignalBeforeTakeover is property 2: a holder cut off from etcd has
// fn's context cancelled strictly before another client can take the lock.
func TestLossSignalBeforeTakeover(t *testing.T) {
	for _, ttl := range []time.Duration{2 * time.Second, 3 * time.Second, 5 * time.Second} {
		t.Run(fmt.Sprintf("ttl=%v", ttl), func(t *testing.T) {
			t.Parallel()
			proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
			cutOff := clientVia(t, proxy.URL())
			key := testKey(t)
			ctx := ctxTimeout(t, 60*time.Second)

			acquired := make(chan struct{})
			var cancelledAt time.Time
			var cause error
			errc := make(chan error, 1)
			go func() {
				errc <- microlock.WithLock(ctx, cutOff, key, func(fctx context.Context) error {
					close(acquired)
					<-fctx.Done()
					cancelledAt = time.Now()
					cause = context.Cause(fctx)
					return fctx.Err()
				}, microlock.WithTTL(ttl))
			}()
			select {
			case <-acquired:
			case err := <-errc:
				t.Fatalf("WithLock: %v", err)
			}
			// Let a renewal or two happen, then cut the holder off.
			time.Sleep(ttl / 2)
			proxy.Blackhole()
			cutAt := time.Now()

			other := newMutex(t, client(t), key)
			if err := other.Lock(ctx); err != nil {
				t.Fatalf("the other client's Lock: %v", err)
			}
			takenAt := time.Now()

			err := <-errc
			if !errors.Is(err, microlock.ErrLockLost) {
				t.Fatalf("WithLock = %v, want ErrLockLost", err)
			}
			if !errors.Is(cause, microlock.ErrLockLost) {
				t.Fatalf("context.Cause(fn's ctx) = %v, want ErrLockLost", cause)
			}
			if !cancelledAt.Before(takenAt) {
				t.Fatalf("fn's ctx was cancelled %v after the other client took the lock", cancelledAt.Sub(takenAt))
			}
			t.Logf("ttl %v: cut→cancel %v, cut→takeover %v, margin %v",
				ttl, cancelledAt.Sub(cutAt).Round(time.Millisecond), takenAt.Sub(cutAt).Round(time.Millisecond),
				takenAt.Sub(cancelledAt).Round(time.Millisecond))
		})
	}
}

// TestWaiterLeaseLost: a waiter cut off from etcd while it waits returns an
// error instead of waiting forever, and its key goes with its lease.
func TestWaiterLeaseLost(t *testing.T) {
	key := testKey(t)
	ctx := ctxTimeout(t, 60*time.Second)
	direct := client(t)
	holder := newMutex(t, direct, key)
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
	w := newMutex(t, clientVia(t, proxy.URL()), key, microlock.WithTTL(2*time.Second))
	errc := make(chan error, 1)
	go func() { errc <- w.Lock(ctx) }()
	for len(keysUnder(t, direct, key)) != 2 {
		time.Sleep(5 * time.Millisecond)
	}
	proxy.Blackhole()
	select {
	case err := <-errc:
		if !errors.Is(err, microlock.ErrLockLost) {
			t.Fatalf("Lock of a cut-off waiter = %v, want ErrLockLost", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a cut-off waiter is still waiting")
	}
	// Its key expires with its lease: the queue holds the holder alone again.
	for deadline := time.Now().Add(10 * time.Second); len(keysUnder(t, direct, key)) != 1; {
		if time.Now().After(deadline) {
			t.Fatalf("the cut-off waiter's key is still queued: %q", keysUnder(t, direct, key))
		}
		time.Sleep(50 * time.Millisecond)
	}
}
