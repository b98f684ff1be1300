package microlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// waitFor polls cond until it holds, failing the test after 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// only returns the one event of typ in l, failing the test otherwise.
func only(t *testing.T, l *eventLog, typ microlock.EventType) microlock.Event {
	t.Helper()
	evs := l.of(typ)
	if len(evs) != 1 {
		t.Fatalf("%d %v events, want 1: %+v", len(evs), typ, l.events)
	}
	return evs[0]
}

// TestEventsQueuedAndWaited: each waiter reports its place in the queue
// once, then Acquired with that place and the time it waited, which spans
// at least the time the holder kept the lock after the waiter queued.
func TestEventsQueuedAndWaited(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	var la, lb, lc eventLog
	a := newMutex(t, c, key, microlock.OnEvent(la.hook))
	b := newMutex(t, c, key, microlock.OnEvent(lb.hook))
	d := newMutex(t, c, key, microlock.OnEvent(lc.hook))
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if ev := only(t, &la, microlock.Acquired); ev.Place != 0 || ev.Waited <= 0 || ev.Token != a.Token() {
		t.Fatalf("uncontended Acquired %+v, want Place 0, Waited > 0, token %d", ev, a.Token())
	}
	if la.count(microlock.Queued) != 0 {
		t.Fatal("an uncontended Lock reported Queued")
	}

	bStart := time.Now()
	errb := make(chan error, 1)
	go func() { errb <- b.Lock(ctx) }()
	waitFor(t, "b to queue", func() bool { return lb.count(microlock.Queued) == 1 })
	bQueued := time.Now() // b's Lock started before this
	errc := make(chan error, 1)
	go func() { errc <- d.Lock(ctx) }()
	waitFor(t, "the third to queue", func() bool { return lc.count(microlock.Queued) == 1 })
	if p := only(t, &lb, microlock.Queued).Place; p != 1 {
		t.Fatalf("second in line: Queued.Place = %d, want 1", p)
	}
	if p := only(t, &lc, microlock.Queued).Place; p != 2 {
		t.Fatalf("third in line: Queued.Place = %d, want 2", p)
	}
	if ev, err := microlock.Holder(ctx, c, key); err != nil || ev.Waiters != 2 || ev.Token != a.Token() {
		t.Fatalf("Holder = %+v, %v; want a's token and 2 waiters", ev, err)
	}

	time.Sleep(50 * time.Millisecond)
	aToken := a.Token()
	// b cannot hold before a's Unlock starts.
	minWait := time.Since(bQueued)
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errb; err != nil {
		t.Fatal(err)
	}
	maxWait := time.Since(bStart)
	ev := only(t, &lb, microlock.Acquired)
	if ev.Place != 1 || ev.Waited < minWait || ev.Waited > maxWait || ev.Token != b.Token() {
		t.Fatalf("b's Acquired %+v: want Place 1 and Waited in [%v, %v]", ev, minWait, maxWait)
	}
	if rel := only(t, &la, microlock.Released); rel.Held < minWait || rel.Token != aToken {
		t.Fatalf("a's Released %+v, want Held >= %v and token %d", rel, minWait, aToken)
	}
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if ev := only(t, &lc, microlock.Acquired); ev.Place != 2 {
		t.Fatalf("third's Acquired %+v, want Place 2", ev)
	}
	if n := lb.count(microlock.GaveUp) + lc.count(microlock.GaveUp); n != 0 {
		t.Fatalf("%d GaveUp events from Locks that succeeded", n)
	}
}

// TestEventsHeld: Released reports how long the lock was held.
func TestEventsHeld(t *testing.T) {
	var l eventLog
	m := newMutex(t, client(t), testKey(t), microlock.OnEvent(l.hook))
	ctx := ctxTimeout(t, 10*time.Second)
	start := time.Now()
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	locked := time.Now()
	time.Sleep(100 * time.Millisecond)
	held := time.Since(locked) // the hold lasts at least from Lock's return to Unlock's call
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	upper := time.Since(start) // and at most from Lock's call to Unlock's return
	ev := only(t, &l, microlock.Released)
	if ev.Held < held || ev.Held > upper || ev.Err != nil || ev.Reason != microlock.LossNone {
		t.Fatalf("Released %+v: want Held in [%v, %v], no Err, no Reason", ev, held, upper)
	}
}

// TestEventsGaveUp: a Lock that returns without the lock reports GaveUp with
// what it returned, how long it tried and its place; TryLock does not.
func TestEventsGaveUp(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	holder := newMutex(t, c, key)
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}

	var lw eventLog
	w := newMutex(t, c, key, microlock.OnEvent(lw.hook))
	wctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- w.Lock(wctx) }()
	waitFor(t, "the waiter to queue", func() bool { return lw.count(microlock.Queued) == 1 })
	cancel()
	err := <-errc
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock = %v, want context.Canceled", err)
	}
	ev := only(t, &lw, microlock.GaveUp)
	if ev.Err != err || ev.Place != 1 || ev.Waited <= 0 || ev.Key != key || ev.Token != 0 {
		t.Fatalf("GaveUp %+v: want Lock's error, Place 1, Waited > 0", ev)
	}

	var ln eventLog
	nw := newMutex(t, c, key, microlock.NoWait(), microlock.OnEvent(ln.hook))
	err = nw.Lock(ctx)
	if !errors.Is(err, microlock.ErrLocked) {
		t.Fatalf("NoWait Lock = %v, want ErrLocked", err)
	}
	if ev := only(t, &ln, microlock.GaveUp); ev.Err != err || ev.Place != 0 {
		t.Fatalf("NoWait GaveUp %+v, want Lock's error and Place 0", ev)
	}
	if err := nw.TryLock(ctx); !errors.Is(err, microlock.ErrLocked) {
		t.Fatalf("TryLock = %v, want ErrLocked", err)
	}
	if n := ln.count(microlock.GaveUp); n != 1 {
		t.Fatalf("%d GaveUp events after a refused TryLock, want still 1", n)
	}
	_ = nw.Close()
	if err := nw.Lock(ctx); !errors.Is(err, microlock.ErrClosed) {
		t.Fatalf("Lock after Close = %v, want ErrClosed", err)
	}
	if evs := ln.of(microlock.GaveUp); len(evs) != 2 || !errors.Is(evs[1].Err, microlock.ErrClosed) {
		t.Fatalf("GaveUp events %+v, want a second one with ErrClosed", evs)
	}

	var lf eventLog
	err = microlock.WithLock(ctx, c, key, func(context.Context) error { return nil },
		microlock.NoWait(), microlock.OnEvent(lf.hook))
	if ev := only(t, &lf, microlock.GaveUp); !errors.Is(err, microlock.ErrLocked) || ev.Err != err {
		t.Fatalf("WithLock = %v, GaveUp %+v: want ErrLocked in both", err, ev)
	}
}

// TestEventsLossReasons: Lost says why, in a form to switch on, and how long
// the lock was held; every Acquired ends with one Released or Lost.
func TestEventsLossReasons(t *testing.T) {
	t.Run("key deleted", func(t *testing.T) {
		c := client(t)
		var l eventLog
		m := newMutex(t, c, testKey(t), microlock.OnEvent(l.hook))
		ctx := ctxTimeout(t, 20*time.Second)
		start := time.Now()
		if err := m.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond) // the key watch is in place
		if _, err := c.Delete(ctx, m.Key()+"/", clientv3.WithPrefix()); err != nil {
			t.Fatal(err)
		}
		<-m.Done()
		waitFor(t, "Lost", func() bool { return l.count(microlock.Lost) == 1 })
		ev := only(t, &l, microlock.Lost)
		if ev.Reason != microlock.LossKeyDeleted || !errors.Is(ev.Err, microlock.ErrLockLost) || ev.Held < 300*time.Millisecond || ev.Held > time.Since(start) {
			t.Fatalf("Lost %+v, want key_deleted, ErrLockLost and Held of at least 300ms", ev)
		}
	})
	t.Run("lease revoked", func(t *testing.T) {
		c := client(t)
		var l eventLog
		m := newMutex(t, c, testKey(t), microlock.WithTTL(5*time.Second), microlock.OnEvent(l.hook))
		ctx := ctxTimeout(t, 20*time.Second)
		if err := m.TryLock(ctx); err != nil {
			t.Fatal(err)
		}
		// Revoke and renew at once, before the key watch (which starts
		// after a short delay) could see the deletion.
		if _, err := client(t).Revoke(ctx, holdLease(t, c, m)); err != nil {
			t.Fatal(err)
		}
		if err := m.Renew(ctx); !errors.Is(err, microlock.ErrLockLost) {
			t.Fatalf("Renew = %v, want ErrLockLost", err)
		}
		waitFor(t, "Lost", func() bool { return l.count(microlock.Lost) == 1 })
		if ev := only(t, &l, microlock.Lost); ev.Reason != microlock.LossLeaseRevoked {
			t.Fatalf("Lost %+v, want lease_revoked", ev)
		}
	})
	t.Run("client closed", func(t *testing.T) {
		c, err := clientv3.New(clientv3.Config{Endpoints: shared.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			t.Fatal(err)
		}
		var l eventLog
		m := newMutex(t, c, testKey(t), microlock.OnEvent(l.hook))
		if err := m.TryLock(ctxTimeout(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
		<-m.Done()
		waitFor(t, "Lost", func() bool { return l.count(microlock.Lost) == 1 })
		if ev := only(t, &l, microlock.Lost); ev.Reason != microlock.LossClientClosed || !errors.Is(ev.Err, context.Canceled) {
			t.Fatalf("Lost %+v, want client_closed wrapping context.Canceled", ev)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
		var l eventLog
		m := newMutex(t, clientVia(t, proxy.URL()), testKey(t), microlock.WithTTL(2*time.Second), microlock.OnEvent(l.hook))
		if err := m.Lock(ctxTimeout(t, 10*time.Second)); err != nil {
			t.Fatal(err)
		}
		proxy.Blackhole()
		<-m.Done()
		waitFor(t, "Lost", func() bool { return l.count(microlock.Lost) == 1 })
		if ev := only(t, &l, microlock.Lost); ev.Reason != microlock.LossDeadline || ev.Held <= 0 {
			t.Fatalf("Lost %+v, want deadline", ev)
		}
		if n := l.count(microlock.Released); n != 0 {
			t.Fatalf("%d Released events after a loss", n)
		}
	})
}

// TestEventsRenewed: Renewed reports the round trip and the time that was
// left before the loss deadline, which a renewal right after the grant finds
// close to the whole TTL less the safety margin.
func TestEventsRenewed(t *testing.T) {
	var l eventLog
	const ttl = 3 * time.Second
	m := newMutex(t, client(t), testKey(t), microlock.WithTTL(ttl), microlock.OnEvent(l.hook))
	ctx := ctxTimeout(t, 20*time.Second)
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := m.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	ev := only(t, &l, microlock.Renewed)
	if ev.Latency <= 0 || ev.Latency > took || ev.Margin <= 0 || ev.Margin >= ttl || ev.Token != m.Token() {
		t.Fatalf("Renewed %+v: want 0 < Latency <= %v, 0 < Margin < %v", ev, took, ttl)
	}
	// The renewal loop's own, every TTL/3.
	waitFor(t, "a renewal by the loop", func() bool { return l.count(microlock.Renewed) >= 2 })
	if ev := l.of(microlock.Renewed)[1]; ev.Latency <= 0 || ev.Margin <= 0 || ev.Margin >= ttl {
		t.Fatalf("the loop's Renewed %+v: want Latency and 0 < Margin < %v", ev, ttl)
	}
}

func TestLossReasonString(t *testing.T) {
	for r, want := range map[microlock.LossReason]string{
		microlock.LossNone: "none", microlock.LossDeadline: "deadline", microlock.LossKeyDeleted: "key_deleted",
		microlock.LossLeaseRevoked: "lease_revoked", microlock.LossClientClosed: "client_closed",
		microlock.LossRenewFailed: "renew_failed", microlock.LossWatchFailed: "watch_failed", microlock.LossMaxHold: "max_hold",
		microlock.LossReason(99): "LossReason(99)",
	} {
		if got := r.String(); got != want {
			t.Errorf("LossReason(%d).String() = %q, want %q", int(r), got, want)
		}
	}
	if microlock.Queued.String() != "queued" || microlock.GaveUp.String() != "gave_up" {
		t.Errorf("Queued, GaveUp = %q, %q", microlock.Queued, microlock.GaveUp)
	}
}
