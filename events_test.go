package microlock_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// next receives one event or fails after a timeout.
func next(t *testing.T, ch <-chan microlock.Event) microlock.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("Watch channel closed")
		}
		return ev
	case <-time.After(15 * time.Second):
		t.Fatal("no Watch event in 15 s")
	}
	panic("unreachable")
}

func expectEvent(t *testing.T, ch <-chan microlock.Event, typ microlock.EventType, holder string, token int64) {
	t.Helper()
	ev := next(t, ch)
	if ev.Type != typ || ev.Holder != holder || ev.Token != token {
		t.Fatalf("event %+v, want %v holder %q token %d", ev, typ, holder, token)
	}
}

// watchKey starts a Watch on key that lasts until the end of the test, when
// its channel is drained to prove the watcher stopped.
func watchKey(t *testing.T, c *clientv3.Client, key string) <-chan microlock.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := microlock.Watch(ctx, c, key)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { drain(t, cancel, ch) })
	return ch
}

// drain receives until the channel is closed, proving the watcher stopped.
func drain(t *testing.T, cancel context.CancelFunc, ch <-chan microlock.Event) {
	t.Helper()
	cancel()
	for range ch {
	}
}

func TestWatchReportsHolders(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	ch := watchKey(t, c, key)
	if ev := next(t, ch); ev.Type != microlock.Unlocked || ev.Key != key {
		t.Fatalf("first event %+v, want Unlocked for %q", ev, key)
	}

	a := newMutex(t, c, key, microlock.WithNodeID("a"))
	b := newMutex(t, c, key, microlock.WithNodeID("b"))
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, ch, microlock.Locked, "a", a.Token())
	errc := make(chan error, 1)
	go func() { errc <- b.Lock(ctx) }()
	for len(keysUnder(t, c, key)) != 2 {
		time.Sleep(5 * time.Millisecond)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// A handoff is one change: b holds.
	expectEvent(t, ch, microlock.Locked, "b", b.Token())
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, ch, microlock.Unlocked, "", 0)

	// Holds by etcd's own lock are reported too.
	s, err := concurrency.NewSession(c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	theirs := concurrency.NewMutex(s, key)
	if err := theirs.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, ch, microlock.Locked, "", theirs.Header().Revision)
	if err := theirs.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, ch, microlock.Unlocked, "", 0)
}

func TestWatchStartsWithCurrentHolder(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 20*time.Second)
	a := newMutex(t, c, key, microlock.WithNodeID("a"))
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	ch := watchKey(t, c, key)
	expectEvent(t, ch, microlock.Locked, "a", a.Token())
}

// TestWatchSurvivesRestartAndCompaction: the watcher keeps reporting across
// an etcd restart, and across a compaction that removed the revisions it
// missed while cut off.
func TestWatchSurvivesRestartAndCompaction(t *testing.T) {
	cl := etcdtest.Start(t, 1)
	proxy := etcdtest.NewProxy(t, cl.Endpoints()[0])
	watcherClient := clientVia(t, proxy.URL())
	c := cl.Client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 60*time.Second)
	ch := watchKey(t, watcherClient, key)
	expectEvent(t, ch, microlock.Unlocked, "", 0)

	// Restart.
	if err := cl.Members[0].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := cl.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	a := newMutex(t, c, key, microlock.WithNodeID("a"))
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, ch, microlock.Locked, "a", a.Token())

	// Cut the watcher off, change holders several times, compact past it all.
	proxy.Blackhole()
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	b := newMutex(t, c, key, microlock.WithNodeID("b"))
	for range 3 {
		if err := b.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Get(ctx, "any")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	proxy.Heal()
	expectEvent(t, ch, microlock.Locked, "b", b.Token())
}

func TestWatchClosesOnCancel(t *testing.T) {
	c := client(t)
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := microlock.Watch(ctx, c, testKey(t))
	if err != nil {
		t.Fatal(err)
	}
	next(t, ch)
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			t.Fatal("event after cancel")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch channel not closed after cancel")
	}
}

func TestEventTypeString(t *testing.T) {
	for typ, want := range map[microlock.EventType]string{
		microlock.Locked: "locked", microlock.Unlocked: "unlocked", microlock.Acquired: "acquired",
		microlock.Released: "released", microlock.Renewed: "renewed", microlock.Lost: "lost",
		microlock.Retrying: "retrying", microlock.EventType(99): "EventType(99)",
	} {
		if got := typ.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(typ), got, want)
		}
	}
}
