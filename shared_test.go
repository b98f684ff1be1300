package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/microlock/microlock"
)

// TestSharedHoldTogether: shared holds hold together and exclude an
// exclusive one; a queued exclusive waiter blocks later shared holds; the
// exclusive hold excludes shared ones in turn.
func TestSharedHoldTogether(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	var readers []*microlock.Mutex
	for i := range 3 {
		r := newMutex(t, c, key, microlock.Shared(), microlock.WithNodeID(fmt.Sprint("r", i)))
		if err := r.TryLock(ctx); err != nil {
			t.Fatalf("shared TryLock %d: %v", i, err)
		}
		readers = append(readers, r)
	}
	ev, err := microlock.Holder(ctx, c, key)
	if err != nil || ev.Holders != 3 || ev.Holder != "r0" {
		t.Fatalf("Holder = %+v, %v; want 3 shared holders", ev, err)
	}
	w := newMutex(t, c, key, microlock.WithNodeID("w"))
	var ale *microlock.AlreadyLockedError
	if err := w.TryLock(ctx); !errors.As(err, &ale) || ale.Holder != "r0" {
		t.Fatalf("exclusive TryLock under shared holders = %v, want *AlreadyLockedError naming r0", err)
	}
	got := lockAsync(ctx, w)
	queueLen(t, c, key, 4)
	notYet(t, "the exclusive Lock", got)
	// A writer waits: a new reader must queue behind it.
	late := newMutex(t, c, key, microlock.Shared(), microlock.WithNodeID("late"))
	if err := late.TryLock(ctx); !errors.As(err, &ale) || ale.Holder != "w" {
		t.Fatalf("shared TryLock behind a queued writer = %v, want *AlreadyLockedError naming the writer", err)
	}
	lateGot := lockAsync(ctx, late)
	queueLen(t, c, key, 5)
	for i, r := range readers {
		notYet(t, "the exclusive Lock", got)
		if err := r.Unlock(ctx); err != nil {
			t.Fatalf("reader %d Unlock: %v", i, err)
		}
	}
	if err := <-got; err != nil {
		t.Fatalf("exclusive Lock after the readers left: %v", err)
	}
	notYet(t, "the late shared Lock", lateGot)
	if err := w.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-lateGot; err != nil {
		t.Fatalf("late shared Lock after the writer: %v", err)
	}
}

// TestSharedNoWriterStarvation: a writer that queues behind a stream of
// overlapping readers gets the lock, and no reader that came after it holds
// before it.
func TestSharedNoWriterStarvation(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 60*time.Second)
	type entry struct{ seq, token int64 }
	var seq atomic.Int64 // orders the entries into fn
	var holding atomic.Int32
	var mu sync.Mutex
	var entries []entry // the readers'
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := microlock.WithLock(ctx, c, key, func(fctx context.Context) error {
					m, _ := microlock.FromContext(fctx)
					e := entry{seq.Add(1), m.Token()}
					holding.Add(1)
					time.Sleep(20 * time.Millisecond)
					holding.Add(-1)
					mu.Lock()
					entries = append(entries, e)
					mu.Unlock()
					return nil
				}, microlock.Shared())
				if err != nil {
					t.Errorf("reader %d: %v", i, err)
					return
				}
			}
		}()
	}
	queueLen(t, c, key, 4) // the readers overlap by now
	var writer entry
	err := microlock.WithLock(ctx, c, key, func(fctx context.Context) error {
		m, _ := microlock.FromContext(fctx)
		writer = entry{seq.Add(1), m.Token()}
		for range 3 {
			if n := holding.Load(); n != 0 {
				return fmt.Errorf("%d readers hold with the writer", n)
			}
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	})
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatalf("writer: %v", err)
	}
	for _, e := range entries {
		if e.token > writer.token && e.seq < writer.seq {
			t.Fatalf("a reader that queued after the writer (token %d > %d) held before it", e.token, writer.token)
		}
	}
	if len(entries) == 0 {
		t.Fatal("no reader held")
	}
}

// TestSharedExclusiveMixed: readers and writers contend in loops; a writer
// never holds with anyone, readers do hold together.
func TestSharedExclusiveMixed(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 60*time.Second)
	var readers, writers atomic.Int32
	var bad atomic.Int32
	var maxReaders gauge
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			write := i%3 == 0
			var opts []microlock.Option
			if !write {
				opts = append(opts, microlock.Shared())
			}
			for range 6 {
				err := microlock.WithLock(ctx, c, key, func(context.Context) error {
					if write {
						if writers.Add(1) != 1 || readers.Load() != 0 {
							bad.Add(1)
						}
						time.Sleep(5 * time.Millisecond)
						writers.Add(-1)
						return nil
					}
					readers.Add(1)
					maxReaders.enter()
					if writers.Load() != 0 {
						bad.Add(1)
					}
					time.Sleep(10 * time.Millisecond)
					maxReaders.exit()
					readers.Add(-1)
					return nil
				}, opts...)
				if err != nil {
					t.Errorf("worker %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := bad.Load(); n != 0 {
		t.Fatalf("%d times a writer held with someone else", n)
	}
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("keys left behind: %v", keys)
	}
}
