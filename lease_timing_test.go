package microlock

import (
	"context"
	"errors"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The lease's timing, in a testing/synctest bubble: time is virtual and
// moves only when every goroutine of the test waits, so these tests live
// through twenty seconds of a lease's life in a millisecond, and every
// instant they check is exact. Only the lease's own etcd calls (grant, renewals, revoke) are
// faked, by fakeEtcd; the lease's code, its timers and its goroutines are
// the real ones. The tests against real etcd check the same behaviour with
// real time.

// ms is a duration in milliseconds, for writing instants.
func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

const third = 3333333333 * time.Nanosecond // TTL/3 of a 10 s lease

// TestLeaseTimingAckedLate: a renewal's deadline counts from when it was
// sent, however late its answer came; the next renewal is due TTL/3 after
// the last one was sent; and an answer that comes after the attempt's
// timeout extends nothing: the retry's does.
func TestLeaseTimingAckedLate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeEtcd()
		f.answer = func(sent time.Duration) (time.Duration, int64, error) {
			switch {
			case sent < 5*time.Second:
				return 1500 * time.Millisecond, 10, nil // late, within the attempt's 1.67 s
			case sent < ms(8400):
				return 2 * time.Second, 10, nil // after the attempt gave up
			}
			return 0, 10, nil
		}
		l := acquireLease(t, f.table(), &clientv3.Client{}, 10)
		defer f.closeAll(l)

		// Granted at 0: lost at 0 + 10 s·0.999 − 1 s.
		if got := l.currentDeadline().Sub(f.start); got != ms(8990) {
			t.Fatalf("deadline after the grant: %v, want 8.99s", got)
		}
		f.sleepUntil(third + 1500*time.Millisecond) // the first renewal's answer is in
		if got := l.currentDeadline().Sub(f.start); got != third+ms(8990) {
			t.Fatalf("deadline after a renewal sent at %v and answered 1.5s later: %v, want %v (from the send)", third, got, third+ms(8990))
		}
		// The second renewal, sent at 2·TTL/3, times out at 2·TTL/3 +
		// TTL/6 = 8.33s; the retry goes 100 ms later.
		f.sleepUntil(9 * time.Second)
		retry := 2*third + 1666666666 + ms(100)
		if got := l.currentDeadline().Sub(f.start); got != retry+ms(8990) {
			t.Fatalf("deadline after a too-late answer and a retry: %v, want %v (from the retry at %v)", got, retry+ms(8990), retry)
		}
		f.sleepUntil(12 * time.Second)
		want := []time.Duration{third, 2 * third, retry, retry + third}
		if got := f.sends(); !slices.Equal(got, want) {
			t.Fatalf("renewals sent at %v, want %v", got, want)
		}
		if ended(l) {
			t.Fatal("the lease ended")
		}
	})
}

// TestLeaseTimingNeverAcked: renewals that are never answered are given up
// after TTL/6 each and retried, the lease ends at its deadline to the
// nanosecond, and it is revoked no sooner than etcd could expire it itself:
// t0 + TTL.
func TestLeaseTimingNeverAcked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeEtcd()
		f.answer = func(time.Duration) (time.Duration, int64, error) { return -1, 0, nil }
		l := acquireLease(t, f.table(), &clientv3.Client{}, 10)
		defer f.closeAll(l)

		f.sleepUntil(ms(8990) - 1)
		if ended(l) {
			t.Fatal("the lease ended before its deadline")
		}
		f.sleepUntil(ms(8990))
		if !ended(l) {
			t.Fatal("the lease did not end at its deadline, 8.99s")
		}
		timeout := 1666666666 * time.Nanosecond // TTL/6
		s1 := third
		s2 := s1 + timeout + ms(100)
		s3 := s2 + timeout + ms(200) // the next, 400 ms after, would be past the deadline
		if got, want := f.sends(), []time.Duration{s1, s2, s3}; !slices.Equal(got, want) {
			t.Fatalf("renewals sent at %v, want %v", got, want)
		}
		f.sleepUntil(10*time.Second - 1)
		if got := f.revoked(); len(got) != 0 {
			t.Fatalf("revoked at %v, before etcd could expire the lease (10s)", got)
		}
		f.sleepUntil(11 * time.Second)
		if got := f.revoked(); !slices.Equal(got, []time.Duration{10 * time.Second}) {
			t.Fatalf("revoked at %v, want once at 10s", got)
		}
	})
}

// TestLeaseTimingDeadlineExact: with every renewal refused, every hold on
// the lease is lost at exactly t0 + T·(1−0.001) − max(250ms, T/10), t0 being
// when the grant was sent, however long the grant took; the first renewal is
// due TTL/3 after the grant was sent.
func TestLeaseTimingDeadlineExact(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeEtcd()
		f.grantAfter = 500 * time.Millisecond
		f.answer = func(time.Duration) (time.Duration, int64, error) { return 0, 0, rpctypes.ErrNoLeader }
		l := acquireLease(t, f.table(), &clientv3.Client{}, 2)
		defer f.closeAll(l)

		deadline := 2*time.Second - 2*time.Millisecond - 250*time.Millisecond // 1.748s
		if got := l.currentDeadline().Sub(f.start); got != deadline {
			t.Fatalf("deadline %v, want %v", got, deadline)
		}
		f.sleepUntil(deadline - 1)
		if ended(l) {
			t.Fatalf("ended before %v", deadline)
		}
		select {
		case <-l.done:
			t.Fatal("the renewal loop ended before the deadline")
		default:
		}
		f.sleepUntil(deadline)
		if !ended(l) {
			t.Fatalf("not ended at %v", deadline)
		}
		select {
		case <-l.done:
		default:
			t.Fatal("the renewal loop still runs after the deadline")
		}
		if got := f.sends(); len(got) == 0 || got[0] != 666666666 {
			t.Fatalf("renewals sent at %v, want the first at TTL/3 = 0.67s", got)
		}
	})
}

// TestLeaseTimingRetrySpacing: a failed renewal is retried after 100 ms,
// then twice as long each time up to TTL/6; a success resets the pause and
// brings back the TTL/3 schedule.
func TestLeaseTimingRetrySpacing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeEtcd()
		f.answer = func(sent time.Duration) (time.Duration, int64, error) {
			if (sent >= 3*time.Second && sent < 8*time.Second) || (sent >= 11*time.Second && sent < ms(11500)) {
				return 0, 0, rpctypes.ErrNoLeader
			}
			return 0, 10, nil
		}
		l := acquireLease(t, f.table(), &clientv3.Client{}, 10)
		defer f.closeAll(l)

		f.sleepUntil(15 * time.Second)
		sends := f.sends()
		var gaps []time.Duration
		for i := 1; i < len(sends); i++ {
			gaps = append(gaps, sends[i]-sends[i-1])
		}
		cap := 1666666666 * time.Nanosecond // TTL/6
		want := []time.Duration{ms(100), ms(200), ms(400), ms(800), ms(1600), cap, third, ms(100), third}
		if !slices.Equal(gaps, want) {
			t.Fatalf("renewals sent at %v: gaps %v, want %v", sends, gaps, want)
		}
		if ended(l) {
			t.Fatal("the lease ended")
		}
	})
}

// TestLeaseTimingIdleLinger: an unused lease is kept renewed for
// leaseLinger after its last use and revoked then, to the nanosecond; a use
// in between starts the count again.
func TestLeaseTimingIdleLinger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeEtcd()
		tab := f.table()
		client := &clientv3.Client{}
		l := acquireLease(t, tab, client, 10)
		defer f.closeAll(l)

		f.sleepUntil(4 * time.Second)
		l.unref()
		f.sleepUntil(8 * time.Second)
		if again := acquireLease(t, tab, client, 10); again != l {
			t.Fatal("a lease unused for 4s was not reused")
		}
		f.sleepUntil(9 * time.Second)
		l.unref()
		f.sleepUntil(9*time.Second + leaseLinger - 1)
		if got := f.revoked(); len(got) != 0 || ended(l) {
			t.Fatalf("revoked at %v (ended %v), before 9s + %v", got, ended(l), leaseLinger)
		}
		f.sleepUntil(9*time.Second + leaseLinger)
		if got := f.revoked(); !slices.Equal(got, []time.Duration{9*time.Second + leaseLinger}) || !ended(l) {
			t.Fatalf("revoked at %v (ended %v), want once at 9s + %v", got, ended(l), leaseLinger)
		}
		// Renewed all along, on schedule, until the revoke.
		want := []time.Duration{third, 2 * third, 3 * third, 4 * third, 5 * third}
		if got := f.sends(); !slices.Equal(got, want) {
			t.Fatalf("renewals sent at %v, want %v", got, want)
		}
	})
}

// acquireResult is what a caller of leaseTable.acquire got, and when.
type acquireResult struct {
	at  time.Duration
	l   *lease
	err error
}

// askLease asks tab for a 10 s lease at offset start, giving up after
// timeout (never if 0; at once if negative), on a goroutine of its own.
func askLease(f *fakeEtcd, tab *leaseTable, client *clientv3.Client, start, timeout time.Duration) <-chan acquireResult {
	ch := make(chan acquireResult, 1)
	go func() {
		time.Sleep(start - f.now())
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		switch {
		case timeout < 0:
			cancel()
		case timeout > 0:
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		l, err := tab.acquire(ctx, client, 10)
		ch <- acquireResult{f.now(), l, err}
	}()
	return ch
}

// TestLeaseTimingSharedGrant: callers that ask for a lease while it is
// being granted share the one grant; a caller whose context ends stops
// waiting at that instant, and neither the grant nor the others' waits end
// with it.
func TestLeaseTimingSharedGrant(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFakeEtcd()
		f.grantAfter = 3 * time.Second
		tab := f.table()
		client := &clientv3.Client{}
		ask := func(start, timeout time.Duration) <-chan acquireResult {
			return askLease(f, tab, client, start, timeout)
		}
		short := ask(0, time.Second)   // gives up at 1s
		long := ask(0, 5*time.Second)  // waits for the grant until 3s
		late := ask(2*time.Second, 0)  // joins the grant at 2s
		cancelled := ask(ms(1500), -1) // its context ended before it asked

		if r := <-short; r.at != time.Second || !errors.Is(r.err, context.DeadlineExceeded) {
			t.Fatalf("the caller with 1s: %+v, want context.DeadlineExceeded at 1s", r)
		}
		if r := <-cancelled; r.at != ms(1500) || !errors.Is(r.err, context.Canceled) {
			t.Fatalf("the caller whose context had ended: %+v, want context.Canceled at 1.5s", r)
		}
		r1, r2 := <-long, <-late
		if r1.err != nil || r2.err != nil || r1.at != 3*time.Second || r2.at != 3*time.Second || r1.l != r2.l {
			t.Fatalf("the callers with 5s and without a deadline: %+v and %+v, want one lease at 3s", r1, r2)
		}
		l := r1.l
		defer f.closeAll(l)
		f.mu.Lock()
		grants := slices.Clone(f.grants)
		f.mu.Unlock()
		if !slices.Equal(grants, []time.Duration{0}) {
			t.Fatalf("grants sent at %v, want one at 0", grants)
		}
		l.mu.Lock()
		refs := l.refs
		l.mu.Unlock()
		if refs != 2 {
			t.Fatalf("the shared lease has %d references, want 2", refs)
		}
	})
}
