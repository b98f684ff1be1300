package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	recipe "go.etcd.io/etcd/client/v3/experimental/recipes"
	"google.golang.org/grpc"

	"github.com/microlock/microlock"
)

// The admission benchmarks: a counting semaphore, and a read-heavy shared
// lock, each against what a user would do without them.
const (
	semLimit       = 4
	semContenders  = 16
	semHold        = 5 * time.Millisecond // the work done under a permit
	readContenders = 8
	readHold       = 2 * time.Millisecond
	writeEvery     = 10 // one hold in ten is exclusive: 90% shared
)

// holder takes a hold and returns its release; it is one contender's way
// of getting in.
type holder func(ctx context.Context) (release func(context.Context) error, err error)

// lockHolder is a holder that locks l.
func lockHolder(l locker) holder {
	return func(ctx context.Context) (func(context.Context) error, error) {
		return l.Unlock, l.Lock(ctx)
	}
}

// BenchmarkSemaphore: 16 contenders, each with its own client, want one of
// 4 slots, hold it 5 ms and let go. A microlock semaphore of limit 4; 4
// microlock Mutexes tried in turn (TryLock on each, then wait on one: the
// simple alternative); and 4 independent keys, 4 contenders per key (the
// ceiling: no coordination between the slots at all). One op is one
// acquisition. The semaphore also reports the watch events its clients
// were delivered per release: the wake-ups.
func BenchmarkSemaphore(b *testing.B) {
	b.Run("semaphore", func(b *testing.B) {
		key := freshKey(b)
		var events atomic.Int64
		hs := make([]holder, semContenders)
		for i := range hs {
			hs[i] = lockHolder(newAdmissionMutex(b, eventCountingClient(b, &events), key, microlock.WithLimit(semLimit)))
		}
		events.Store(0)
		s := runHolders(b, hs, semLimit, func(int, int) bool { return false }, semHold)
		s.report(b)
		b.ReportMetric(float64(events.Load())/float64(s.n), "wakeups/release")
	})
	b.Run("in-turn", func(b *testing.B) {
		key := freshKey(b)
		hs := make([]holder, semContenders)
		for i := range hs {
			cli := benchClient(b)
			ms := make([]*microlock.Mutex, semLimit)
			for j := range ms {
				ms[j] = newAdmissionMutex(b, cli, fmt.Sprint(key, "/", j))
			}
			hs[i] = inTurn(ms, i)
		}
		runHolders(b, hs, semLimit, func(int, int) bool { return false }, semHold).report(b)
	})
	b.Run("independent", func(b *testing.B) {
		key := freshKey(b)
		hs := make([]holder, semContenders)
		for i := range hs {
			hs[i] = lockHolder(newAdmissionMutex(b, benchClient(b), fmt.Sprint(key, "/", i%semLimit)))
		}
		runHolders(b, hs, semLimit, func(int, int) bool { return false }, semHold).report(b)
	})
}

// inTurn tries each of ms with TryLock, starting from a different one each
// time, and waits on the contender's own one if all are taken.
func inTurn(ms []*microlock.Mutex, i int) holder {
	next := i
	return func(ctx context.Context) (func(context.Context) error, error) {
		for j := range ms {
			m := ms[(next+j)%len(ms)]
			err := m.TryLock(ctx)
			if err == nil {
				next++
				return m.Unlock, nil
			}
			if !errors.Is(err, microlock.ErrLocked) {
				return nil, err
			}
		}
		m := ms[i%len(ms)]
		return m.Unlock, m.Lock(ctx)
	}
}

// BenchmarkReadHeavy: 8 contenders, each with its own client, hold one key
// for 2 ms, shared nine times in ten and exclusive the tenth: microlock's
// Shared against etcd's recipes.RWMutex. One op is one hold.
func BenchmarkReadHeavy(b *testing.B) {
	write := func(who, n int) bool { return (who+n)%writeEvery == 0 }
	b.Run("microlock", func(b *testing.B) {
		key := freshKey(b)
		hs := make([]holder, readContenders)
		for i := range hs {
			cli := benchClient(b)
			r := newAdmissionMutex(b, cli, key, microlock.Shared())
			w := newAdmissionMutex(b, cli, key)
			n := 0
			hs[i] = func(ctx context.Context) (func(context.Context) error, error) {
				n++
				if write(i, n) {
					return w.Unlock, w.Lock(ctx)
				}
				return r.Unlock, r.Lock(ctx)
			}
		}
		runHolders(b, hs, 0, write, readHold).report(b)
	})
	b.Run("etcd-rwmutex", func(b *testing.B) {
		key := freshKey(b)
		hs := make([]holder, readContenders)
		for i := range hs {
			rw := recipe.NewRWMutex(newSession(b, benchClient(b)), key)
			n := 0
			hs[i] = func(context.Context) (func(context.Context) error, error) {
				n++
				if write(i, n) {
					return func(context.Context) error { return rw.Unlock() }, rw.Lock()
				}
				return func(context.Context) error { return rw.RUnlock() }, rw.RLock()
			}
		}
		runHolders(b, hs, 0, write, readHold).report(b)
	})
}

// newAdmissionMutex is newMicrolock with options.
func newAdmissionMutex(b *testing.B, cli *clientv3.Client, key string, opts ...microlock.Option) *microlock.Mutex {
	b.Helper()
	m, err := microlock.New(cli, key, append(opts, microlock.WithTTL(benchTTL))...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := m.Lock(ctx); err != nil {
		b.Fatal(err)
	}
	if err := m.Unlock(ctx); err != nil {
		b.Fatal(err)
	}
	return m
}

// holdStats sums up a run of holders.
type holdStats struct {
	n        int           // holds
	span     time.Duration // first hold taken → last hold taken
	p99      time.Duration // wait: the holder was called → it returned
	fairness float64       // most holds of one contender ÷ fewest
}

func (s holdStats) report(b *testing.B) {
	b.ReportMetric(float64(s.span.Nanoseconds())/float64(s.n), "ns/op")
	b.ReportMetric(float64(s.n)/s.span.Seconds(), "holds/s")
	b.ReportMetric(msec(s.p99), "p99-wait-ms")
	b.ReportMetric(s.fairness, "max/min")
}

// runHolders runs the contenders hs until they have made b.N holds in all
// (at least minRounds each), each hold lasting hold. It fails the benchmark
// if more than limit hold at once (limit > 0), or if a hold for which
// exclusive(who, n) is true overlaps any other.
func runHolders(b *testing.B, hs []holder, limit int, exclusive func(who, n int) bool, hold time.Duration) holdStats {
	r := &holdRun{limit: limit, exclusive: exclusive, hold: hold,
		total: int64(max(b.N, minRounds*len(hs))), counts: make([]int, len(hs)), waits: make([][]time.Duration, len(hs))}
	var cancel context.CancelFunc
	r.ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	r.cancel = cancel
	var wg sync.WaitGroup
	b.ResetTimer()
	for i, h := range hs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.contend(i, h)
		}()
	}
	wg.Wait()
	b.StopTimer()
	if r.failure != nil {
		b.Fatal(r.failure)
	}
	s := holdStats{n: int(r.taken.Load()), span: time.Duration(r.last.Load() - r.first.Load())}
	all := slices.Concat(r.waits...)
	slices.Sort(all)
	s.p99 = percentile(all, 99)
	if lo := slices.Min(r.counts); lo > 0 {
		s.fairness = float64(slices.Max(r.counts)) / float64(lo)
	} else {
		s.fairness = math.Inf(1)
	}
	return s
}

// holdRun is one runHolders.
type holdRun struct {
	ctx       context.Context
	cancel    context.CancelFunc
	limit     int
	exclusive func(who, n int) bool
	hold      time.Duration
	total     int64

	inside, writers    atomic.Int32
	taken, first, last atomic.Int64 // holds taken; unix ns of the first and the last
	counts             []int        // per contender, written by its goroutine only
	waits              [][]time.Duration

	mu      sync.Mutex
	failure error
}

func (r *holdRun) fail(err error) {
	r.mu.Lock()
	r.failure = errors.Join(r.failure, err)
	r.mu.Unlock()
	r.cancel()
}

// contend is contender i's loop: take a hold with h, check who else holds,
// work, release.
func (r *holdRun) contend(i int, h holder) {
	for n := 1; r.taken.Load() < r.total; n++ {
		t0 := time.Now()
		release, err := h(r.ctx)
		if err != nil {
			if r.ctx.Err() == nil {
				r.fail(fmt.Errorf("contender %d: %w", i, err))
			}
			return
		}
		now := time.Now()
		r.first.CompareAndSwap(0, now.UnixNano())
		r.last.Store(now.UnixNano())
		r.taken.Add(1)
		r.counts[i]++
		r.waits[i] = append(r.waits[i], now.Sub(t0))
		excl := r.exclusive(i, n)
		in := r.inside.Add(1)
		if excl {
			r.writers.Add(1)
		}
		if (r.limit > 0 && int(in) > r.limit) || (r.writers.Load() > 0 && in > 1) {
			r.fail(fmt.Errorf("%d holders at once (limit %d, exclusive %v)", in, r.limit, excl))
		}
		time.Sleep(r.hold)
		if excl {
			r.writers.Add(-1)
		}
		r.inside.Add(-1)
		rctx, rcancel := context.WithTimeout(context.Background(), opTimeout)
		err = release(rctx)
		rcancel()
		if err != nil {
			r.fail(fmt.Errorf("contender %d: release: %w", i, err))
			return
		}
	}
}

// eventCountingClient returns a client of the run's etcd that adds to n
// the events of every watch response it receives.
func eventCountingClient(b *testing.B, n *atomic.Int64) *clientv3.Client {
	b.Helper()
	count := func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, err
		}
		return &eventStream{ClientStream: cs, n: n}, nil
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   etcdOf(b).Endpoints(),
		DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithChainStreamInterceptor(count)},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cli.Close() })
	return cli
}

// eventStream counts the events of the watch responses it receives.
type eventStream struct {
	grpc.ClientStream
	n *atomic.Int64
}

func (s *eventStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if wr, ok := m.(*pb.WatchResponse); ok && err == nil {
		s.n.Add(int64(len(wr.Events)))
	}
	return err
}
