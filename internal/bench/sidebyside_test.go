package bench

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/microlock/microlock"
)

// BenchmarkSideBySide runs what a ratio target compares in turn, one of each
// per op (the order rotating from op to op), each on a client of its own, and
// reports the median time of each. On a shared, noisy machine, benchmarks
// run one after the other see different moments of the noise, and their
// ratios wander; run in turn, both sides of a ratio see the same moments.
// The table's ratios for the uncontended cycle and TryLock come from here;
// the benchmarks of each alone give the allocations.
func BenchmarkSideBySide(b *testing.B) {
	noop := func(context.Context) error { return nil }
	b.Run("cycle", func(b *testing.B) {
		cli, floorKey, lease := floorSetup(b)
		wlCli, wlKey := benchClient(b), freshKey(b, "WithLock")
		opt := microlock.WithTTL(benchTTL)
		if err := microlock.WithLock(benchCtx(b), wlCli, wlKey, noop, opt); err != nil {
			b.Fatal(err)
		}
		mu := newMicrolock(b, benchClient(b), freshKey(b, "Mutex"))
		em := concurrency.NewMutex(newSession(b, benchClient(b)), freshKey(b, "Session"))
		nsCli, nsKey := benchClient(b), freshKey(b, "NewSession")
		rawCli, _, rawLease := floorSetup(b)
		raw := newRequestsLocker(rawCli, freshKey(b, "requests"), rawLease)
		runInTurn(b, []step{
			{"floor", func(ctx context.Context) error { return putIfAbsentDelete(ctx, cli, floorKey, lease) }},
			{"requests", func(ctx context.Context) error { return lockUnlock(ctx, raw) }},
			{"WithLock", func(ctx context.Context) error { return microlock.WithLock(ctx, wlCli, wlKey, noop, opt) }},
			{"Mutex", func(ctx context.Context) error { return lockUnlock(ctx, mu) }},
			{"etcd-Session", func(ctx context.Context) error { return lockUnlock(ctx, em) }},
			{"etcd-NewSession", func(ctx context.Context) error {
				s, err := concurrency.NewSession(nsCli, concurrency.WithTTL(int(benchTTL.Seconds())))
				if err != nil {
					return err
				}
				err = lockUnlock(ctx, concurrency.NewMutex(s, nsKey))
				if cerr := s.Close(); err == nil {
					err = cerr
				}
				return err
			}},
		})
	})
	b.Run("trylock", func(b *testing.B) {
		cli, floorKey, lease := floorSetup(b)
		key := freshKey(b)
		holder := newMicrolock(b, benchClient(b), key+"/microlock")
		mu := newMicrolock(b, benchClient(b), key+"/microlock")
		eholder := concurrency.NewMutex(newSession(b, benchClient(b)), key+"/etcd")
		em := concurrency.NewMutex(newSession(b, benchClient(b)), key+"/etcd")
		ctx := benchCtx(b)
		if err := holder.Lock(ctx); err != nil {
			b.Fatal(err)
		}
		if err := eholder.Lock(ctx); err != nil {
			b.Fatal(err)
		}
		runInTurn(b, []step{
			{"txn", func(ctx context.Context) error {
				_, err := cli.Txn(ctx).Then(clientv3.OpPut(floorKey, "bench", clientv3.WithLease(lease))).Commit()
				return err
			}},
			{"microlock", func(ctx context.Context) error { return wantErr(mu.TryLock(ctx), microlock.ErrLocked) }},
			{"etcd", func(ctx context.Context) error { return wantErr(em.TryLock(ctx), concurrency.ErrLocked) }},
		})
	})
}

// step is one of the things BenchmarkSideBySide runs in turn.
type step struct {
	name string
	run  func(ctx context.Context) error
}

// runInTurn runs every step once per op, starting each op with the next
// step, and reports for each its median duration, in µs, as "<name>-us", and
// the mean CPU time this process (the client side) spent in it, as
// "<name>-cpu-us". The etcd server's CPU is not split by step: what a
// request costs it spills over into the next step.
func runInTurn(b *testing.B, steps []step) {
	ctx := benchCtx(b)
	took := make([][]time.Duration, len(steps))
	cpu := make([]time.Duration, len(steps))
	for i := range took {
		took[i] = make([]time.Duration, 0, b.N)
	}
	b.ResetTimer()
	for i := range b.N {
		for j := range steps {
			k := (i + j) % len(steps)
			c0 := cpuTime()
			start := time.Now()
			err := steps[k].run(ctx)
			d := time.Since(start)
			cpu[k] += cpuTime() - c0
			if err != nil {
				b.Fatalf("%s: %v", steps[k].name, err)
			}
			took[k] = append(took[k], d)
		}
	}
	b.StopTimer()
	for k, s := range steps {
		slices.Sort(took[k])
		b.ReportMetric(float64(percentile(took[k], 50))/1e3, s.name+"-us")
		b.ReportMetric(float64(cpu[k])/1e3/float64(b.N), s.name+"-cpu-us")
	}
}

// putIfAbsentDelete is the floor of a lock cycle: the two commits it needs.
func putIfAbsentDelete(ctx context.Context, cli *clientv3.Client, key string, lease clientv3.LeaseID) error {
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, "bench", clientv3.WithLease(lease))).
		Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return errors.New(key + " was not absent")
	}
	_, err = cli.Delete(ctx, key)
	return err
}

// requestsLocker sends, by hand, the requests of microlock's uncontended
// cycle: its enqueue Txn (put our key unless it is there, reading the last
// key of the queue) and its release (delete our key if it is still the
// hold's). It tells the cost of those requests from the library's own. The
// key has the shape of microlock's and, as microlock's does when nothing
// else holds the lease's slot, the same name every cycle.
type requestsLocker struct {
	cli   *clientv3.Client
	pfx   string
	key   string
	lease clientv3.LeaseID
	rev   int64 // of the key while held
}

func newRequestsLocker(cli *clientv3.Client, lock string, lease clientv3.LeaseID) *requestsLocker {
	pfx := lock + "/"
	return &requestsLocker{cli: cli, pfx: pfx, key: pfx + strconv.FormatInt(int64(lease), 16) + "_0", lease: lease}
}

func (r *requestsLocker) Lock(ctx context.Context) error {
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(r.key), "=", 0)).
		Then(clientv3.OpGet(r.pfx, clientv3.WithLastCreate()...), clientv3.OpPut(r.key, "bench", clientv3.WithLease(r.lease))).
		Else(clientv3.OpGet(r.key)).
		Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded || len(resp.Responses[0].GetResponseRange().Kvs) != 0 {
		return errors.New(r.key + " was not first in an empty queue")
	}
	r.rev = resp.Header.Revision
	return nil
}

func (r *requestsLocker) Unlock(ctx context.Context) error {
	resp, err := r.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(r.key), "=", r.rev)).
		Then(clientv3.OpDelete(r.key)).
		Commit()
	if err == nil && !resp.Succeeded {
		err = errors.New(r.key + " was not ours to delete")
	}
	return err
}

// wantErr turns the expected error into success, and anything else, success
// included, into an error.
func wantErr(err, want error) error {
	if errors.Is(err, want) {
		return nil
	}
	return errors.New("TryLock on a held key: got " + errString(err) + ", want " + want.Error())
}

func errString(err error) string {
	if err == nil {
		return "success"
	}
	return err.Error()
}
