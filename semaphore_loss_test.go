package microlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// TestSemaphoreHolderDeath: a permit holder cut off from etcd loses its
// permit when its lease expires, so the permit is not leaked; the waiter
// behind it takes it; and the holder's work is told to stop strictly
// before that. The other permit holder is undisturbed. Shared holds are
// checked alike, with an exclusive waiter.
func TestSemaphoreHolderDeath(t *testing.T) {
	for _, rule := range []struct {
		name         string
		opt, waitOpt microlock.Option
	}{
		{"limit 2", microlock.WithLimit(2), microlock.WithLimit(2)},
		{"shared", microlock.Shared(), microlock.WithTTL(2 * time.Second)},
	} {
		t.Run(rule.name, func(t *testing.T) {
			t.Parallel()
			const ttl = 2 * time.Second
			proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
			cutOff := clientVia(t, proxy.URL())
			c := client(t)
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
				}, rule.opt, microlock.WithTTL(ttl))
			}()
			select {
			case <-acquired:
			case err := <-errc:
				t.Fatalf("WithLock: %v", err)
			}
			other := newMutex(t, c, key, rule.opt)
			if err := other.Lock(ctx); err != nil {
				t.Fatal(err)
			}
			waiter := newMutex(t, c, key, rule.waitOpt)
			got := lockAsync(ctx, waiter)
			queueLen(t, c, key, 3)
			notYet(t, "the waiter", got)
			if rule.name == "shared" {
				// The exclusive waiter also needs the other shared
				// holder gone; it leaves now, the dead one cannot.
				if err := other.Unlock(ctx); err != nil {
					t.Fatal(err)
				}
				notYet(t, "the waiter", got)
			}
			proxy.Blackhole()
			cutAt := time.Now()
			if err := <-got; err != nil {
				t.Fatalf("the waiter's Lock: %v", err)
			}
			takenAt := time.Now()
			err := <-errc
			if !errors.Is(err, microlock.ErrLockLost) || !errors.Is(cause, microlock.ErrLockLost) {
				t.Fatalf("WithLock = %v, cause %v; want ErrLockLost", err, cause)
			}
			if !cancelledAt.Before(takenAt) {
				t.Fatalf("the dead holder was told %v after its permit was handed on", cancelledAt.Sub(takenAt))
			}
			t.Logf("TTL %v: cut → loss signal %v, cut → permit handed on %v", ttl,
				cancelledAt.Sub(cutAt).Round(time.Millisecond), takenAt.Sub(cutAt).Round(time.Millisecond))
			if keys := keysUnder(t, c, key); rule.name != "shared" && len(keys) != 2 {
				t.Fatalf("queue %v, want the two live holders' keys", keys)
			}
			if rule.name != "shared" && other.Err() != nil {
				t.Fatalf("the other holder: %v", other.Err())
			}
		})
	}
}
