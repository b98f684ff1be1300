package otel_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/microlock/microlock"
	mlotel "github.com/microlock/microlock/contrib/otel"
	"github.com/microlock/microlock/internal/etcdtest"
	"github.com/microlock/microlock/internal/testkit"
)

// reader is an SDK MeterProvider with a ManualReader, and what it read.
type reader struct {
	t  *testing.T
	r  *sdkmetric.ManualReader
	mp *sdkmetric.MeterProvider
}

func newReader(t *testing.T, opts ...mlotel.Option) (*mlotel.Metrics, *reader) {
	t.Helper()
	r := &reader{t: t, r: sdkmetric.NewManualReader()}
	r.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(r.r))
	t.Cleanup(func() { _ = r.mp.Shutdown(context.Background()) })
	m, err := mlotel.New(r.mp, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return m, r
}

// collect reads every instrument of the adapter's scope, by name.
func (r *reader) collect() map[string]metricdata.Aggregation {
	r.t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.r.Collect(context.Background(), &rm); err != nil {
		r.t.Fatal(err)
	}
	out := make(map[string]metricdata.Aggregation)
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != mlotel.ScopeName {
			r.t.Fatalf("instrument scope %q, want %q", sm.Scope.Name, mlotel.ScopeName)
		}
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

func match(set attribute.Set, kv []attribute.KeyValue) bool {
	return set.Equals(func() *attribute.Set { s := attribute.NewSet(kv...); return &s }())
}

// sum returns the value of a counter or up-down counter's point with
// exactly the attributes kv.
func (r *reader) sum(name string, kv ...attribute.KeyValue) int64 {
	r.t.Helper()
	d, ok := r.collect()[name]
	if !ok {
		return 0
	}
	s, ok := d.(metricdata.Sum[int64])
	if !ok {
		r.t.Fatalf("%s is a %T, want a Sum[int64]", name, d)
	}
	for _, p := range s.DataPoints {
		if match(p.Attributes, kv) {
			return p.Value
		}
	}
	return 0
}

// hist returns the count and sum of a histogram's point with exactly the
// attributes kv.
func (r *reader) hist(name string, kv ...attribute.KeyValue) (uint64, time.Duration) {
	r.t.Helper()
	d, ok := r.collect()[name]
	if !ok {
		return 0, 0
	}
	h, ok := d.(metricdata.Histogram[float64])
	if !ok {
		r.t.Fatalf("%s is a %T, want a Histogram[float64]", name, d)
	}
	for _, p := range h.DataPoints {
		if match(p.Attributes, kv) {
			return p.Count, time.Duration(p.Sum * float64(time.Second))
		}
	}
	return 0, 0
}

func jobsAttr(key string) string {
	if strings.Contains(key, "/jobs/") {
		return "jobs/*"
	}
	return key
}

// TestHoldsContentionAndGaveUp drives two holds of one key, the second
// queued behind the first, and a NoWait WithLock that gives up.
func TestHoldsContentionAndGaveUp(t *testing.T) {
	m, r := newReader(t, mlotel.WithKeyAttribute(jobsAttr))
	c := shared.Client(t)
	ctx := testkit.Ctx(t, 30*time.Second)
	key := t.Name() + "/jobs/3"
	k := mlotel.KeyAttr.String("jobs/*")
	a := testkit.Mutex(t, c, key, m.Option())
	b := testkit.Mutex(t, c, key, m.Option())
	start := time.Now()
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- b.Lock(ctx) }()
	testkit.WaitFor(t, "the waiter to queue", func() bool { return r.sum("microlock.waiting", k) == 1 })
	queued := time.Now()
	if held := r.sum("microlock.held", k); held != 1 {
		t.Fatalf("microlock.held = %d while a holds, want 1", held)
	}
	err := microlock.WithLock(ctx, c, key, func(context.Context) error { return nil }, microlock.NoWait(), m.Option())
	if !errors.Is(err, microlock.ErrLocked) {
		t.Fatalf("NoWait WithLock = %v, want ErrLocked", err)
	}
	time.Sleep(100 * time.Millisecond)
	minWait := time.Since(queued)
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

	if held, waiting := r.sum("microlock.held", k), r.sum("microlock.waiting", k); held != 0 || waiting != 0 {
		t.Fatalf("after both holds: held %d, waiting %d; want 0, 0", held, waiting)
	}
	n, sum := r.hist("microlock.acquire.duration", k, mlotel.ResultAttr.String("acquired"))
	if n != 2 || sum < minWait || sum > total {
		t.Fatalf("acquire: %d points, sum %v; want 2, sum in [%v, %v]", n, sum, minWait, total)
	}
	if n, _ := r.hist("microlock.acquire.duration", k, mlotel.ResultAttr.String("locked")); n != 1 {
		t.Fatalf("acquire with result locked: %d, want 1", n)
	}
	n, sum = r.hist("microlock.hold.duration", k, mlotel.EndAttr.String("released"))
	if n != 2 || sum < minWait || sum > total {
		t.Fatalf("hold: %d points, sum %v; want 2, sum in [%v, %v]", n, sum, minWait, total)
	}
	if n, _ := r.hist("microlock.hold.duration", mlotel.KeyAttr.String(key), mlotel.EndAttr.String("released")); n != 0 {
		t.Fatal("a point under the raw key, despite WithKeyAttribute")
	}
}

// TestLossKeyDeleted: a hold whose key is deleted is counted as lost, with
// its reason.
func TestLossKeyDeleted(t *testing.T) {
	m, r := newReader(t)
	c := shared.Client(t)
	ctx := testkit.Ctx(t, 30*time.Second)
	key := t.Name()
	k := mlotel.KeyAttr.String(key)
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
	testkit.WaitFor(t, "the loss", func() bool {
		return r.sum("microlock.losses", k, mlotel.ReasonAttr.String("key_deleted")) == 1
	})
	n, sum := r.hist("microlock.hold.duration", k, mlotel.EndAttr.String("lost"))
	if n != 1 || sum < 300*time.Millisecond || sum > time.Since(start) {
		t.Fatalf("lost hold: %d points, sum %v; want 1 of at least 300ms", n, sum)
	}
	if held := r.sum("microlock.held", k); held != 0 {
		t.Fatalf("microlock.held = %d after the loss, want 0", held)
	}
}

// TestRetryAndRenewal: a Lock cut off from etcd retries (counted) and takes
// the lock once etcd answers again; a renewal records its round trip and
// the margin left.
func TestRetryAndRenewal(t *testing.T) {
	m, r := newReader(t)
	proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
	c := shared.Client(t, proxy.URL())
	ctx := testkit.Ctx(t, 60*time.Second)
	const ttl = 3 * time.Second
	mu := testkit.Mutex(t, c, t.Name(), microlock.WithTTL(ttl), m.Option())
	proxy.Blackhole()
	errc := make(chan error, 1)
	go func() { errc <- mu.Lock(ctx) }()
	testkit.WaitFor(t, "a retry", func() bool { return r.sum("microlock.retries") >= 1 })
	proxy.Heal()
	if err := <-errc; err != nil {
		t.Fatalf("Lock after etcd came back: %v", err)
	}
	if held := r.sum("microlock.held", mlotel.KeyAttr.String(t.Name())); held != 1 {
		t.Fatalf("microlock.held = %d, want 1", held)
	}
	before, _ := r.hist("microlock.renew.duration")
	start := time.Now()
	if err := mu.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	n, lat := r.hist("microlock.renew.duration")
	if n < before+1 {
		t.Fatalf("renew duration: %d points after Renew, want at least %d", n, before+1)
	}
	if n == before+1 && (lat <= 0 || lat > took*time.Duration(n)) {
		t.Fatalf("renew duration sum %v over %d points, Renew took %v", lat, n, took)
	}
	nm, margin := r.hist("microlock.renew.margin")
	if nm != n || margin <= 0 || margin >= ttl*time.Duration(nm) {
		t.Fatalf("renew margin: %d points, sum %v; want %d, each in (0, %v)", nm, margin, n, ttl)
	}
}

func TestNewRejectsNilProvider(t *testing.T) {
	if _, err := mlotel.New(nil); err == nil || !strings.HasPrefix(err.Error(), "microlock: ") {
		t.Fatalf("New(nil) = %v, want an error", err)
	}
}
