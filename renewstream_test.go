package microlock_test

import (
	"testing"
	"time"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// TestRenewalLeavesSilentEndpoint: a lease renews over one long-lived
// stream. When the endpoint that stream runs through goes silent, the
// stream is dropped once an attempt times out, and the next attempt opens
// a new one, through the client's other endpoint: automatic renewals and
// Mutex.Renew, even one whose ctx allows far longer than an attempt, go on,
// and the hold is not lost.
func TestRenewalLeavesSilentEndpoint(t *testing.T) {
	const ttl = 3 * time.Second
	silent := etcdtest.NewProxy(t, shared.Endpoints()[0])
	other := etcdtest.NewProxy(t, shared.Endpoints()[0])
	c := clientVia(t, silent.URL())
	ctx := ctxTimeout(t, 60*time.Second)
	log := &eventLog{}
	m := newMutex(t, c, testKey(t), microlock.WithTTL(ttl), microlock.OnEvent(log.hook))
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Renew(ctx); err != nil { // the renewal stream runs through silent
		t.Fatal(err)
	}
	c.SetEndpoints(silent.URL(), other.URL())
	for range 4 { // both endpoints connected
		if _, err := c.Get(ctx, "x"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(25 * time.Millisecond)
	}

	silent.Blackhole()
	start := time.Now()
	if err := m.Renew(ctx); err != nil {
		t.Fatalf("Renew with one endpoint silent: %v", err)
	}
	took := time.Since(start)
	t.Logf("Renew with one endpoint silent took %v", took.Round(time.Millisecond))
	if took > ttl {
		t.Errorf("Renew with one endpoint silent took %v, more than the TTL", took)
	}
	// Two TTLs of automatic renewals.
	want := log.count(microlock.Renewed) + 6
	for deadline := time.Now().Add(4 * ttl); log.count(microlock.Renewed) < want; {
		if err := m.Err(); err != nil {
			t.Fatalf("the hold was lost: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d automatic renewals in %v, want 6", 6-(want-log.count(microlock.Renewed)), 4*ttl)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := m.Err(); err != nil {
		t.Fatalf("the hold was lost: %v", err)
	}
	silent.Heal() // closes its connections: give the client a moment to see it
	time.Sleep(200 * time.Millisecond)
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}
