package microlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// outageTTL is long enough that waiting it out is plainly slower than the
// revoke that follows etcd's return.
const outageTTL = 5 * time.Second

// TestOutageRecoverySingleMember: etcd dies while a WithLock's fn runs, stays
// down longer than the TTL and restarts on the same data, restoring the lost
// hold's lease with a fresh TTL (etcd issue #9395). The process that lost
// the hold revokes that lease as soon as etcd answers, so its next WithLock
// takes the lock within about a second of etcd serving again, not a TTL.
func TestOutageRecoverySingleMember(t *testing.T) {
	cl := etcdtest.Start(t, 1)
	member := cl.Members[0]
	c := cl.Client(t)
	key := testKey(t)
	took := outage(t, c, key, func() {
		if err := member.Kill(); err != nil {
			t.Fatal(err)
		}
	}, func() {
		if err := member.Restart(); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("next acquisition %v after the client reconnected (TTL %v)", took.Round(time.Millisecond), outageTTL)
	if took > time.Second {
		t.Errorf("the next acquisition took %v after the client reconnected, want under 1 s (not a TTL of %v)", took, outageTTL)
	}
}

// TestOutageRecoveryLeaderChange: the same with a 3-member cluster that
// loses quorum (two members killed, the leader among them) for longer than
// the TTL; when they come back a new leader restores every lease with a
// fresh TTL.
func TestOutageRecoveryLeaderChange(t *testing.T) {
	cl := etcdtest.Start(t, 3)
	c := cl.Client(t)
	leader, err := cl.Leader(ctxTimeout(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var down []*etcdtest.Member
	down = append(down, leader)
	for _, m := range cl.Members {
		if m != leader && len(down) < 2 {
			down = append(down, m)
		}
	}
	key := testKey(t)
	took := outage(t, c, key, func() {
		for _, m := range down {
			if err := m.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}, func() {
		for _, m := range down {
			if err := m.Restart(); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Logf("next acquisition %v after the client reconnected (TTL %v)", took.Round(time.Millisecond), outageTTL)
	if took > time.Second {
		t.Errorf("the next acquisition took %v after the client reconnected, want under 1 s (not a TTL of %v)", took, outageTTL)
	}
}

// outage holds key with WithLock, runs kill while fn runs, waits for the
// loss signal and then longer than the TTL, runs restart, and returns how
// long the next WithLock of the same client took from then.
func outage(t *testing.T, c *clientv3.Client, key string, kill, restart func()) time.Duration {
	t.Helper()
	ctx := ctxTimeout(t, 90*time.Second)
	acquired := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		errc <- microlock.WithLock(ctx, c, key, func(fctx context.Context) error {
			close(acquired)
			<-fctx.Done()
			return fctx.Err()
		}, microlock.WithTTL(outageTTL))
	}()
	<-acquired
	kill()
	select {
	case err := <-errc:
		if !errors.Is(err, microlock.ErrLockLost) {
			t.Fatalf("WithLock across the outage = %v, want ErrLockLost", err)
		}
	case <-time.After(2 * outageTTL):
		t.Fatal("no loss signal within two TTLs of the outage")
	}
	time.Sleep(outageTTL + time.Second)
	restart()
	// The client's own reconnect (gRPC's backoff grows while etcd is down)
	// is not the lock's doing: time from the first request it gets through.
	restarted := time.Now()
	for {
		gctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		_, err := c.Get(gctx, "outage-probe")
		cancel()
		if err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	t.Logf("the client reconnected %v after etcd served again", start.Sub(restarted).Round(time.Millisecond))
	if err := microlock.WithLock(ctx, c, key, func(context.Context) error { return nil }, microlock.WithTTL(outageTTL)); err != nil {
		t.Fatalf("WithLock after the outage: %v", err)
	}
	return time.Since(start)
}

// TestRevokeAfterLossKeepsMargin: a hold lost to its deadline while etcd is
// still reachable (the holder's renewals were cut off, its revoke is not) is
// not revoked before etcd could have expired the lease by itself: the work
// that was told to stop keeps the margin the deadline gave it before the
// next holder can come in.
func TestRevokeAfterLossKeepsMargin(t *testing.T) {
	const ttl = 3 * time.Second
	proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
	c := clientVia(t, proxy.URL())
	key := testKey(t)
	m := newMutex(t, c, key, microlock.WithTTL(ttl))
	ctx := ctxTimeout(t, 30*time.Second)
	if err := m.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	deleted := make(chan time.Time, 1)
	events := client(t).Watch(ctx, key+"/", clientv3.WithPrefix(), clientv3.WithFilterPut())
	go func() {
		for wr := range events {
			if len(wr.Events) > 0 {
				deleted <- time.Now()
				return
			}
		}
	}()
	time.Sleep(ttl / 3) // a renewal or so, then nothing gets through
	proxy.Blackhole()
	select {
	case <-m.Done():
	case <-time.After(2 * ttl):
		t.Fatal("no loss signal")
	}
	lost := time.Now()
	proxy.Heal() // the revoke can get through from now on
	select {
	case at := <-deleted:
		// The deadline is at least max(250 ms, TTL/10) before etcd's
		// earliest expiry; allow a little for the timers.
		if d := at.Sub(lost); d < 250*time.Millisecond {
			t.Fatalf("the key was deleted %v after the loss signal, before etcd itself could have", d)
		}
	case <-time.After(2 * ttl):
		t.Fatal("the lost lease's key was not deleted within two TTLs")
	}
}
