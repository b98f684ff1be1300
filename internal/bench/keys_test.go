package bench

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sync/errgroup"
)

// keyRounds is how many times each library takes its turn in BenchmarkKeys.
const keyRounds = 6

// keyCyclesEach is the fewest cycles each goroutine makes in one turn.
const keyCyclesEach = 8

// BenchmarkKeys has K goroutines on one shared client, each cycling a key of
// its own (lock, unlock), so nothing is contended: it measures how well a
// library shares one client. etcd's side shares one Session, as microlock's
// Mutexes share the client's lease. A third side, "requests", sends
// microlock's two requests by hand on a client of its own (requestsLocker):
// the most microlock could do with no library code at all. The sides take
// turns, keyRounds each, so that all see the same moments of a noisy
// machine; each reports its median cycles per second over its turns, and the
// CPU time per cycle of this process (the client side) and of the etcd
// server. One op is one cycle of each side.
func BenchmarkKeys(b *testing.B) {
	for _, k := range []int{16, 256} {
		b.Run(fmt.Sprintf("K=%d", k), func(b *testing.B) {
			cli := benchClient(b)
			ml := make([]locker, k)
			for i := range ml {
				ml[i] = newMicrolock(b, cli, freshKey(b, "microlock", strconv.Itoa(i)))
			}
			s := newSession(b, benchClient(b))
			et := make([]locker, k)
			for i := range et {
				et[i] = concurrency.NewMutex(s, freshKey(b, "etcd", strconv.Itoa(i)))
			}
			rcli, _, lease := floorSetup(b)
			rq := make([]locker, k)
			for i := range rq {
				rq[i] = newRequestsLocker(rcli, freshKey(b, "requests", strconv.Itoa(i)), lease)
			}
			libs := []struct {
				name string
				ls   []locker
				rate []float64
				cpu  time.Duration // this process's
				etcd time.Duration // etcd's
				n    int
			}{{name: "microlock", ls: ml}, {name: "etcd", ls: et}, {name: "requests", ls: rq}}
			// At least keyCyclesEach cycles per goroutine and turn: fewer
			// measure the goroutines' start more than their cycles.
			per := max(b.N/keyRounds, keyCyclesEach*k)
			pid := etcdOf(b).Members[0].PID()
			b.ResetTimer()
			for r := range keyRounds {
				for j := range libs {
					lib := &libs[(r+j)%len(libs)]
					cpu, ecpu := cpuTime(), processCPU(pid)
					d, err := cycleKeys(lib.ls, per)
					if err != nil {
						b.Fatalf("%s: %v", lib.name, err)
					}
					lib.cpu += cpuTime() - cpu
					lib.etcd += processCPU(pid) - ecpu
					lib.n += per
					lib.rate = append(lib.rate, float64(per)/d.Seconds())
				}
			}
			b.StopTimer()
			for _, lib := range libs {
				slices.Sort(lib.rate)
				b.ReportMetric(lib.rate[len(lib.rate)/2], lib.name+"-cycles/s")
				b.ReportMetric(float64(lib.cpu.Microseconds())/float64(lib.n), lib.name+"-cpu-us/cycle")
				b.ReportMetric(float64(lib.etcd.Microseconds())/float64(lib.n), lib.name+"-etcd-cpu-us/cycle")
			}
		})
	}
}

// cycleKeys runs one goroutine per locker until they have made n lock
// cycles in all, and returns how long that took.
func cycleKeys(ls []locker, n int) (time.Duration, error) {
	var left atomic.Int64
	left.Store(int64(n))
	g, ctx := errgroup.WithContext(context.Background())
	start := time.Now()
	for _, l := range ls {
		g.Go(func() error {
			for left.Add(-1) >= 0 {
				if err := lockUnlock(ctx, l); err != nil {
					return err
				}
			}
			return nil
		})
	}
	err := g.Wait()
	return time.Since(start), err
}
