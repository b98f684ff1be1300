package bench

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sync/errgroup"
)

// minRounds is the fewest acquisitions per contender a contention run makes,
// so that fairness means something even when the harness asks for one op.
const minRounds = 3

// BenchmarkContention runs C contenders on one key, each with its own
// client (and so its own lease), each looping lock → tiny critical section →
// unlock. One op is one acquisition.
func BenchmarkContention(b *testing.B) {
	for _, c := range []int{2, 8, 32} {
		b.Run(fmt.Sprintf("C=%d/microlock", c), func(b *testing.B) {
			key := freshKey(b)
			ls := make([]locker, c)
			for i := range ls {
				ls[i] = newMicrolock(b, benchClient(b), key)
			}
			contend(b, ls)
		})
		b.Run(fmt.Sprintf("C=%d/etcd", c), func(b *testing.B) {
			key := freshKey(b)
			ls := make([]locker, c)
			for i := range ls {
				ls[i] = concurrency.NewMutex(newSession(b, benchClient(b)), key)
			}
			contend(b, ls)
		})
	}
}

// contend runs the contenders ls on one key until they have made b.N
// acquisitions in all (rounded up to whole rounds of len(ls), at least
// minRounds rounds) and reports handoffs per second, handoff latency p50 and
// p99, and fairness.
func contend(b *testing.B, ls []locker) {
	c := len(ls)
	total := max(b.N, minRounds*c)
	total = (total + c - 1) / c * c

	// done ends the run once the last acquisition is in; the group's
	// context also ends at the first contender's error.
	ctx, done := context.WithCancel(context.Background())
	defer done()
	g, ctx := errgroup.WithContext(ctx)
	// Indexed by acquisition number, 1-based. The number is taken while the
	// lock is held, so it follows the order of the holds.
	acqs := make([]acquisition, total+1)
	var next atomic.Int64
	var inside atomic.Int32

	b.ResetTimer()
	for i, l := range ls {
		g.Go(func() error {
			for {
				if err := l.Lock(ctx); err != nil {
					if ctx.Err() != nil {
						return nil // done, or another contender failed
					}
					return fmt.Errorf("contender %d: Lock: %w", i, err)
				}
				locked := time.Now()
				n := int(next.Add(1))
				// The tiny critical section: check that no one else is in.
				overlap := inside.Add(1) != 1
				inside.Add(-1)
				uctx, ucancel := context.WithTimeout(context.Background(), opTimeout)
				err := l.Unlock(uctx)
				ucancel()
				unlocked := time.Now()
				switch {
				case overlap:
					return errors.New("two contenders held the lock at once")
				case err != nil:
					return fmt.Errorf("contender %d: Unlock: %w", i, err)
				case n > total:
					return nil
				}
				acqs[n] = acquisition{who: i, locked: locked, unlocked: unlocked}
				if n == total {
					done()
					return nil
				}
			}
		})
	}
	err := g.Wait()
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	reportHandoffs(b, handoffs(acqs[1:], c), total)
}

// reportHandoffs reports the figures of total acquisitions.
func reportHandoffs(b *testing.B, h handoffStats, total int) {
	b.ReportMetric(float64(h.span.Nanoseconds())/float64(total-1), "ns/op")
	b.ReportMetric(h.perSecond, "handoffs/s")
	b.ReportMetric(msec(h.p50), "p50-ms")
	b.ReportMetric(msec(h.p99), "p99-ms")
	b.ReportMetric(h.fairness, "max/min")
}

func msec(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
