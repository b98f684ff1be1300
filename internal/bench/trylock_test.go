package bench

import (
	"context"
	"errors"
	"testing"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/microlock/microlock"
)

// BenchmarkTryLockFail measures TryLock on a key that another client holds:
// the answer "locked" and whatever cleanup the library does after it.
func BenchmarkTryLockFail(b *testing.B) {
	b.Run("microlock", func(b *testing.B) {
		key := freshKey(b)
		holder := newMicrolock(b, benchClient(b), key)
		m := newMicrolock(b, benchClient(b), key)
		ctx := benchCtx(b)
		if err := holder.Lock(ctx); err != nil {
			b.Fatal(err)
		}
		runTryLocks(b, func(ctx context.Context) error { return m.TryLock(ctx) }, microlock.ErrLocked)
	})
	b.Run("etcd", func(b *testing.B) {
		key := freshKey(b)
		holder := concurrency.NewMutex(newSession(b, benchClient(b)), key)
		m := concurrency.NewMutex(newSession(b, benchClient(b)), key)
		ctx := benchCtx(b)
		if err := holder.Lock(ctx); err != nil {
			b.Fatal(err)
		}
		runTryLocks(b, m.TryLock, concurrency.ErrLocked)
	})
}

// runTryLocks runs try b.N times, each of which must fail with want.
func runTryLocks(b *testing.B, try func(context.Context) error, want error) {
	ctx := benchCtx(b)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := try(ctx); !errors.Is(err, want) {
			b.Fatalf("TryLock on a held key = %v, want %v", err, want)
		}
	}
}
