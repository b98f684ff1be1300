package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
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

	x := interopCase{ctx, c, key, ours, theirs}
	t.Run("ours-first", x.oursFirst)
	t.Run("theirs-first", x.theirsFirst)
	t.Run("mixed-contention", x.mixedContention)
}

// interopCase is what the subtests of TestInteropConcurrencyMutex share: one
// Mutex of each library on the same key.
type interopCase struct {
	ctx    context.Context
	c      *clientv3.Client
	key    string
	ours   *microlock.Mutex
	theirs *concurrency.Mutex
}

// oursFirst: while microlock holds, etcd's Mutex is refused by TryLock and
// waits in Lock, and takes the lock once microlock releases it.
func (x interopCase) oursFirst(t *testing.T) {
	ctx, ours, theirs := x.ctx, x.ours, x.theirs
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
}

// theirsFirst: while etcd's Mutex holds, microlock's TryLock reports the
// holder's revision as its token, and Lock waits until it is released.
func (x interopCase) theirsFirst(t *testing.T) {
	ctx, ours, theirs := x.ctx, x.ours, x.theirs
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
}

// mixedContention: clients of both libraries contend for the key, and
// never two hold it at once.
func (x interopCase) mixedContention(t *testing.T) {
	ctx, c, key := x.ctx, x.c, x.key
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
}
