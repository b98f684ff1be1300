package prometheus_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
	mlprom "github.com/microlock/microlock/contrib/prometheus"
	"github.com/microlock/microlock/internal/etcdtest"
	"github.com/microlock/microlock/internal/testkit"
)

// jobsLabel maps "<test>/jobs/<id>" to "jobs/*".
func jobsLabel(key string) string {
	if i := strings.Index(key, "/jobs/"); i >= 0 {
		return "jobs/*"
	}
	return key
}

// metric returns the sample of family name whose labels are exactly labels
// (name=value pairs), or nil.
func metric(t *testing.T, reg *prom.Registry, name string, labels ...string) *dto.Metric {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.Metric {
			if len(m.Label)*2 != len(labels) {
				continue
			}
			for i, l := range m.Label {
				if l.GetName() != labels[2*i] || l.GetValue() != labels[2*i+1] {
					continue next
				}
			}
			return m
		}
	}
	return nil
}

func gauge(t *testing.T, reg *prom.Registry, name string, labels ...string) float64 {
	t.Helper()
	if m := metric(t, reg, name, labels...); m != nil {
		return m.GetGauge().GetValue()
	}
	return math.NaN()
}

func counter(t *testing.T, reg *prom.Registry, name string, labels ...string) float64 {
	t.Helper()
	if m := metric(t, reg, name, labels...); m != nil {
		return m.GetCounter().GetValue()
	}
	return 0
}

// histogram returns the sample count and sum of a histogram series.
func histogram(t *testing.T, reg *prom.Registry, name string, labels ...string) (uint64, time.Duration) {
	t.Helper()
	if m := metric(t, reg, name, labels...); m != nil {
		h := m.GetHistogram()
		return h.GetSampleCount(), time.Duration(h.GetSampleSum() * float64(time.Second))
	}
	return 0, 0
}

func newRegistry(t *testing.T, opts ...mlprom.Option) (*mlprom.Metrics, *prom.Registry) {
	t.Helper()
	m := mlprom.New(opts...)
	reg := prom.NewRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	return m, reg
}

// TestHoldsAndContention drives two holds of one key, the second queued
// behind the first, and checks the gauges while it waits, and the wait and
// hold histograms after, under the key label the option maps IDs to.
func TestHoldsAndContention(t *testing.T) {
	m, reg := newRegistry(t, mlprom.WithKeyLabel(jobsLabel))
	c := shared.Client(t)
	ctx := testkit.Ctx(t, 30*time.Second)
	key := t.Name() + "/jobs/17"
	var own atomic.Int32 // the user's own hook still runs beside the adapter
	countOwn := microlock.OnEvent(func(microlock.Event) { own.Add(1) })

	a := testkit.Mutex(t, c, key, countOwn, m.Option())
	b := testkit.Mutex(t, c, key, m.Option(), countOwn)
	start := time.Now()
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- b.Lock(ctx) }()
	testkit.WaitFor(t, "the waiter to queue", func() bool { return gauge(t, reg, "microlock_waiting", "key", "jobs/*") == 1 })
	queued := time.Now()
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP microlock_held Locks held now, by key.
# TYPE microlock_held gauge
microlock_held{key="jobs/*"} 1
# HELP microlock_waiting Lock calls queued behind a holder now, by key.
# TYPE microlock_waiting gauge
microlock_waiting{key="jobs/*"} 1
`), "microlock_held", "microlock_waiting"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	minWait := time.Since(queued) // b's wait spans at least this
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	total := time.Since(start)

	if g, w := gauge(t, reg, "microlock_held", "key", "jobs/*"), gauge(t, reg, "microlock_waiting", "key", "jobs/*"); g != 0 || w != 0 {
		t.Fatalf("after both holds: held %v, waiting %v; want 0, 0", g, w)
	}
	n, sum := histogram(t, reg, "microlock_acquire_wait_seconds", "key", "jobs/*", "result", "acquired")
	if n != 2 || sum < minWait || sum > total {
		t.Fatalf("acquire wait: %d samples, sum %v; want 2, sum in [%v, %v]", n, sum, minWait, total)
	}
	n, sum = histogram(t, reg, "microlock_hold_seconds", "end", "released", "key", "jobs/*")
	if n != 2 || sum < minWait || sum > total {
		t.Fatalf("hold: %d samples, sum %v; want 2, sum in [%v, %v]", n, sum, minWait, total)
	}
	if metric(t, reg, "microlock_held", "key", key) != nil {
		t.Fatal("a series labelled with the raw key, despite WithKeyLabel")
	}
	if got := own.Load(); got != 5 { // a: Acquired, Released; b: Queued, Acquired, Released
		t.Fatalf("the user's own hook saw %d events, want 5", got)
	}
}

// TestGaveUp: a Lock that gives up is counted under its result, and a
// waiter that leaves the queue no longer counts as waiting.
func TestGaveUp(t *testing.T) {
	m, reg := newRegistry(t)
	c := shared.Client(t)
	ctx := testkit.Ctx(t, 30*time.Second)
	key := t.Name()
	holder := testkit.Mutex(t, c, key, m.Option())
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	err := microlock.WithLock(ctx, c, key, func(context.Context) error { return nil }, microlock.NoWait(), m.Option())
	if !errors.Is(err, microlock.ErrLocked) {
		t.Fatalf("WithLock with NoWait = %v, want ErrLocked", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	w := testkit.Mutex(t, c, key, m.Option())
	errc := make(chan error, 1)
	go func() { errc <- w.Lock(wctx) }()
	testkit.WaitFor(t, "the waiter to queue", func() bool { return gauge(t, reg, "microlock_waiting", "key", key) == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock = %v, want context.Canceled", err)
	}
	_ = w.Close()
	if err := w.Lock(ctx); !errors.Is(err, microlock.ErrClosed) {
		t.Fatalf("Lock after Close = %v, want ErrClosed", err)
	}
	for result, want := range map[string]uint64{"locked": 1, "canceled": 1, "closed": 1, "acquired": 1} {
		if n, _ := histogram(t, reg, "microlock_acquire_wait_seconds", "key", key, "result", result); n != want {
			t.Errorf("acquire wait with result %q: %d samples, want %d", result, n, want)
		}
	}
	if w := gauge(t, reg, "microlock_waiting", "key", key); w != 0 {
		t.Fatalf("waiting %v after the waiter gave up, want 0", w)
	}
	if g := gauge(t, reg, "microlock_held", "key", key); g != 1 {
		t.Fatalf("held %v, want 1", g)
	}
}

// TestLossKeyDeleted: a hold whose key is deleted is counted as lost, with
// its reason, and is no longer held.
func TestLossKeyDeleted(t *testing.T) {
	m, reg := newRegistry(t)
	c := shared.Client(t)
	ctx := testkit.Ctx(t, 30*time.Second)
	key := t.Name()
	mu := testkit.Mutex(t, c, key, m.Option())
	start := time.Now()
	if err := mu.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the hold's key watch is in place
	if _, err := c.Delete(ctx, key+"/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	<-mu.Done()
	testkit.WaitFor(t, "the loss to be counted", func() bool {
		return counter(t, reg, "microlock_losses_total", "key", key, "reason", "key_deleted") == 1
	})
	n, sum := histogram(t, reg, "microlock_hold_seconds", "end", "lost", "key", key)
	if n != 1 || sum < 300*time.Millisecond || sum > time.Since(start) {
		t.Fatalf("lost hold: %d samples, sum %v; want 1 of at least 300ms", n, sum)
	}
	if g := gauge(t, reg, "microlock_held", "key", key); g != 0 {
		t.Fatalf("held %v after the loss, want 0", g)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP microlock_losses_total Holds that ended without Unlock, by key and reason.
# TYPE microlock_losses_total counter
microlock_losses_total{key="TestLossKeyDeleted",reason="key_deleted"} 1
`), "microlock_losses_total"); err != nil {
		t.Fatal(err)
	}
}

// TestRetryAndRenewal: a Lock cut off from etcd retries (counted) and takes
// the lock once etcd answers again; a renewal records its latency and the
// margin left before the loss deadline.
func TestRetryAndRenewal(t *testing.T) {
	m, reg := newRegistry(t)
	proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
	c := shared.Client(t, proxy.URL())
	ctx := testkit.Ctx(t, 60*time.Second)
	const ttl = 3 * time.Second
	mu := testkit.Mutex(t, c, t.Name(), microlock.WithTTL(ttl), m.Option())
	proxy.Blackhole()
	errc := make(chan error, 1)
	go func() { errc <- mu.Lock(ctx) }()
	testkit.WaitFor(t, "a retry", func() bool { return counter(t, reg, "microlock_retries_total") >= 1 })
	proxy.Heal()
	if err := <-errc; err != nil {
		t.Fatalf("Lock after etcd came back: %v", err)
	}
	if g := gauge(t, reg, "microlock_held", "key", t.Name()); g != 1 {
		t.Fatalf("held %v, want 1", g)
	}
	if n, _ := histogram(t, reg, "microlock_acquire_wait_seconds", "key", t.Name(), "result", "acquired"); n != 1 {
		t.Fatalf("acquire wait: %d samples, want 1", n)
	}

	before, _ := histogram(t, reg, "microlock_renew_latency_seconds")
	start := time.Now()
	if err := mu.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	n, lat := histogram(t, reg, "microlock_renew_latency_seconds")
	if n < before+1 {
		t.Fatalf("renew latency: %d samples after Renew, want at least %d", n, before+1)
	}
	if n == before+1 && (lat <= 0 || lat > took*time.Duration(n)) {
		t.Fatalf("renew latency sum %v over %d samples, Renew took %v", lat, n, took)
	}
	nm, margin := histogram(t, reg, "microlock_renew_margin_seconds")
	if nm != n || margin <= 0 || margin >= ttl*time.Duration(nm) {
		t.Fatalf("renew margin: %d samples, sum %v; want %d samples each in (0, %v)", nm, margin, n, ttl)
	}
}
