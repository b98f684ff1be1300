package microlock_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/microlock/microlock"
)

// TestAdmissionInterop: shared holds and a semaphore's permits exclude, and
// are excluded by, etcd's concurrency.Mutex and etcdctl lock, in both
// orders: the foreign locker waits behind every shared holder or permit,
// and they wait behind it.
func TestAdmissionInterop(t *testing.T) {
	rules := []struct {
		name string
		opt  microlock.Option
	}{{"shared", microlock.Shared()}, {"limit 2", microlock.WithLimit(2)}}
	for _, kind := range lockKinds() {
		if kind.impl == "microlock" {
			continue
		}
		for _, rule := range rules {
			t.Run(kind.name+"/"+rule.name+"/ours-first", func(t *testing.T) {
				c := client(t)
				key := testKey(t)
				ctx := ctxTimeout(t, 30*time.Second)
				ours := []*microlock.Mutex{newMutex(t, c, key, rule.opt), newMutex(t, c, key, rule.opt)}
				for _, m := range ours {
					if err := m.Lock(ctx); err != nil {
						t.Fatal(err)
					}
				}
				a, release := kind.start(t, key)
				queueLen(t, c, key, 3)
				for _, m := range ours {
					if err := a.wait(200 * time.Millisecond); !errors.Is(err, errNotYet) {
						t.Fatalf("%s while %d of ours hold: %v", kind.name, len(ours), err)
					}
					if err := m.Unlock(ctx); err != nil {
						t.Fatal(err)
					}
				}
				if err := a.wait(10 * time.Second); err != nil {
					t.Fatalf("%s after ours left: %v", kind.name, err)
				}
				release()
			})
			t.Run(kind.name+"/"+rule.name+"/theirs-first", func(t *testing.T) {
				c := client(t)
				key := testKey(t)
				ctx := ctxTimeout(t, 30*time.Second)
				a, release := kind.start(t, key)
				if err := a.wait(10 * time.Second); err != nil {
					t.Fatal(err)
				}
				_, token := holderOf(t, c, key)
				m := newMutex(t, c, key, rule.opt)
				var ale *microlock.AlreadyLockedError
				if err := m.TryLock(ctx); !errors.As(err, &ale) || ale.Token != token {
					t.Fatalf("our TryLock while %s holds = %v, want *AlreadyLockedError with token %d", kind.name, err, token)
				}
				var gots []<-chan error
				for range 2 {
					gots = append(gots, lockAsync(ctx, newMutex(t, c, key, rule.opt)))
				}
				queueLen(t, c, key, 3)
				for i, got := range gots {
					notYet(t, fmt.Sprint("our Lock ", i), got)
				}
				release()
				for i, got := range gots {
					if err := <-got; err != nil {
						t.Fatalf("our Lock %d after %s released: %v", i, kind.name, err)
					}
				}
				if ev, err := microlock.Holder(ctx, c, key); err != nil || ev.Holders != 2 {
					t.Fatalf("Holder = %+v, %v; want our 2 holders", ev, err)
				}
			})
		}
	}
}
