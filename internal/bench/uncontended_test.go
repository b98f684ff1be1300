package bench

import (
	"context"
	"runtime"
	"testing"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/microlock/microlock"
)

// BenchmarkUncontended measures one lock cycle (acquire, release) on one
// client, on a key nobody else wants.
func BenchmarkUncontended(b *testing.B) {
	noop := func(context.Context) error { return nil }
	b.Run("microlock/WithLock", func(b *testing.B) {
		cli := benchClient(b)
		key := freshKey(b)
		opt := microlock.WithTTL(benchTTL)
		// The first call grants the client's lease; later calls share it.
		if err := microlock.WithLock(benchCtx(b), cli, key, noop, opt); err != nil {
			b.Fatal(err)
		}
		runCycles(b, func(ctx context.Context) error {
			return microlock.WithLock(ctx, cli, key, noop, opt)
		})
	})
	b.Run("microlock/Mutex", func(b *testing.B) {
		m := newMicrolock(b, benchClient(b), freshKey(b))
		runCycles(b, func(ctx context.Context) error { return lockUnlock(ctx, m) })
	})
	b.Run("etcd/Session", func(b *testing.B) {
		m := concurrency.NewMutex(newSession(b, benchClient(b)), freshKey(b))
		runCycles(b, func(ctx context.Context) error { return lockUnlock(ctx, m) })
	})
	b.Run("etcd/NewSession", func(b *testing.B) {
		// What a stateless wrapper around etcd's Mutex does: a lease
		// granted and revoked per call.
		cli := benchClient(b)
		key := freshKey(b)
		runCycles(b, func(ctx context.Context) error {
			s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(benchTTL.Seconds())))
			if err != nil {
				return err
			}
			err = lockUnlock(ctx, concurrency.NewMutex(s, key))
			if cerr := s.Close(); err == nil {
				err = cerr
			}
			return err
		})
	})
}

func lockUnlock(ctx context.Context, l locker) error {
	if err := l.Lock(ctx); err != nil {
		return err
	}
	return l.Unlock(ctx)
}

// runCycles runs cycle b.N times and reports, besides the harness's
// allocs/op and B/op over the whole run, what shows whether a cycle leaves
// anything behind: allocations per cycle in the first and the second half of
// the run, and, over the second half (when start-up costs are paid), the
// growth per cycle of the heap in use after a GC and of the number of
// goroutines. A leak shows as a second half dearer than the first, and as
// growth that stays the same per cycle however many cycles run; noise
// shrinks with more cycles.
func runCycles(b *testing.B, cycle func(ctx context.Context) error) {
	ctx := benchCtx(b)
	var start, mid, end runtime.MemStats
	var midG int
	half := b.N / 2
	sample := func(ms *runtime.MemStats) int {
		runtime.GC()
		runtime.ReadMemStats(ms)
		return runtime.NumGoroutine()
	}
	b.ReportAllocs()
	midG = sample(&start)
	mid = start
	b.ResetTimer()
	for i := range b.N {
		if i == half && half > 0 {
			b.StopTimer()
			midG = sample(&mid)
			b.StartTimer()
		}
		if err := cycle(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	endG := sample(&end)
	if half == 0 {
		return
	}
	late := float64(b.N - half)
	b.ReportMetric(float64(mid.Mallocs-start.Mallocs)/float64(half), "early-allocs/op")
	b.ReportMetric(float64(end.Mallocs-mid.Mallocs)/late, "late-allocs/op")
	b.ReportMetric(float64(int64(end.HeapInuse)-int64(mid.HeapInuse))/late, "late-heap-B/op")
	b.ReportMetric(float64(endG-midG)/late, "late-goroutines/op")
}
