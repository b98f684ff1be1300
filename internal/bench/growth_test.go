package bench

import (
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// growthCycles is how many lock cycles BenchmarkGrowth runs on one key, per
// library, at least (3,000 with -short).
const growthCycles = 10000

// growthWarmup is how many cycles of each library BenchmarkGrowth runs on
// other keys before it starts, so that the first tenth is not the dearest
// for reasons of its own (connections, buffers, the server's caches).
const growthWarmup = 200

// BenchmarkGrowth asks whether a lock cycle gets dearer as cycles pile up on
// one key. etcd keeps every deleted key in its index until the next
// compaction, and a range read over a lock's prefix visits them all; the
// harness's etcd never compacts, as many deployments compact only every few
// minutes. microlock's Mutex and etcd's (one Session reused) take turns
// cycling a key of their own, max(b.N, growthCycles) times each; each reports
// the median time of a cycle over the first and the last tenth of its
// cycles. etcd's key is the same at every cycle of a Session, so its cost
// does not grow: it is the control, and the load of a shared machine, which
// drifts, moves both alike. One op is one cycle of each library.
func BenchmarkGrowth(b *testing.B) {
	cycles := growthCycles
	if testing.Short() {
		cycles = 3000
	}
	cycles = max(cycles, b.N)
	mlCli, etcdSession := benchClient(b), newSession(b, benchClient(b))
	libs := []struct {
		name   string
		l      locker
		warmup locker
		took   []time.Duration
	}{
		{
			name:   "microlock",
			l:      newMicrolock(b, mlCli, freshKey(b, "microlock")),
			warmup: newMicrolock(b, mlCli, freshKey(b, "microlock-warmup")),
		},
		{
			name:   "etcd",
			l:      concurrency.NewMutex(etcdSession, freshKey(b, "etcd")),
			warmup: concurrency.NewMutex(etcdSession, freshKey(b, "etcd-warmup")),
		},
	}
	ctx := benchCtx(b)
	for range growthWarmup {
		for _, lib := range libs {
			if err := lockUnlock(ctx, lib.warmup); err != nil {
				b.Fatalf("%s: %v", lib.name, err)
			}
		}
	}
	b.ResetTimer()
	for i := range cycles {
		for j := range libs {
			lib := &libs[(i+j)%len(libs)]
			start := time.Now()
			if err := lockUnlock(ctx, lib.l); err != nil {
				b.Fatalf("%s: %v", lib.name, err)
			}
			lib.took = append(lib.took, time.Since(start))
		}
	}
	b.StopTimer()
	tenth := cycles / 10
	b.ReportMetric(float64(cycles), "cycles")
	growth := make([]float64, len(libs))
	for i, lib := range libs {
		first := slices.Clone(lib.took[:tenth])
		last := slices.Clone(lib.took[len(lib.took)-tenth:])
		slices.Sort(first)
		slices.Sort(last)
		f, l := percentile(first, 50), percentile(last, 50)
		b.ReportMetric(float64(f)/1e3, lib.name+"-first-us")
		b.ReportMetric(float64(l)/1e3, lib.name+"-last-us")
		growth[i] = float64(l) / float64(f)
	}
	// microlock's growth with the machine's drift taken out.
	b.ReportMetric(growth[0]/growth[1], "relative-growth")
}
