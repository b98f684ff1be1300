package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sync/errgroup"

	"github.com/microlock/microlock"
)

// TestInteropConcurrencyMutex: microlock and etcd's concurrency.Mutex on the
// same key exclude each other, in both directions.
func TestInteropConcurrencyMutex(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	sess, err := concurrency.NewSession(c, concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	theirs := concurrency.NewMutex(sess, key)
	ours := newMutex(t, c, key)

	t.Run("ours-first", func(t *testing.T) {
		if err := ours.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		if err := theirs.TryLock(ctx); !errors.Is(err, concurrency.ErrLocked) {
			t.Fatalf("their TryLock while we hold = %v, want ErrLocked", err)
		}
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		err := theirs.Lock(short)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("their Lock while we hold = %v, want to wait", err)
		}
		got := make(chan error, 1)
		go func() { got <- theirs.Lock(ctx) }()
		time.Sleep(100 * time.Millisecond)
		select {
		case err := <-got:
			t.Fatalf("their Lock returned %v while we hold", err)
		default:
		}
		if err := ours.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatalf("their Lock after our Unlock: %v", err)
		}
		if err := theirs.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("theirs-first", func(t *testing.T) {
		if err := theirs.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		err := ours.TryLock(ctx)
		var ale *microlock.AlreadyLockedError
		if !errors.As(err, &ale) || ale.Token != theirs.Header().Revision {
			t.Fatalf("our TryLock while they hold = %v, want *AlreadyLockedError with their revision %d", err, theirs.Header().Revision)
		}
		got := make(chan error, 1)
		go func() { got <- ours.Lock(ctx) }()
		time.Sleep(100 * time.Millisecond)
		select {
		case err := <-got:
			t.Fatalf("our Lock returned %v while they hold", err)
		default:
		}
		if err := theirs.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatalf("our Lock after their Unlock: %v", err)
		}
		if err := ours.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("mixed-contention", func(t *testing.T) {
		var g gauge
		var eg errgroup.Group
		const rounds = 10
		for i := range 3 {
			eg.Go(func() error {
				for range rounds {
					err := microlock.WithLock(ctx, c, key, func(context.Context) error {
						g.enter()
						time.Sleep(time.Millisecond)
						g.exit()
						return nil
					})
					if err != nil {
						return fmt.Errorf("ours %d: %w", i, err)
					}
				}
				return nil
			})
			theirs := client(t)
			eg.Go(func() error {
				s, err := concurrency.NewSession(theirs, concurrency.WithTTL(5))
				if err != nil {
					return err
				}
				defer s.Close()
				m := concurrency.NewMutex(s, key)
				for range rounds {
					if err := m.Lock(ctx); err != nil {
						return fmt.Errorf("theirs %d: %w", i, err)
					}
					g.enter()
					time.Sleep(time.Millisecond)
					g.exit()
					if err := m.Unlock(ctx); err != nil {
						return fmt.Errorf("theirs %d: %w", i, err)
					}
				}
				return nil
			})
		}
		if err := eg.Wait(); err != nil {
			t.Fatal(err)
		}
		if m := g.max.Load(); m != 1 {
			t.Fatalf("saw %d holders at once", m)
		}
	})
}
