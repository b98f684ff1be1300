package microlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// TestLockRetriesUnreachableEtcd: a worker whose etcd is unreachable keeps
// trying, reporting each retry, and takes the lock once etcd is back.
func TestLockRetriesUnreachableEtcd(t *testing.T) {
	proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
	c := clientVia(t, proxy.URL())
	key := testKey(t)
	ctx := ctxTimeout(t, 60*time.Second)
	// Warm the connection up, then cut it.
	if _, err := c.Get(ctx, key); err != nil {
		t.Fatal(err)
	}
	proxy.Blackhole()
	retried := make(chan struct{}, 100)
	log := &eventLog{}
	m := newMutex(t, c, key, microlock.WithTTL(time.Second), microlock.OnEvent(func(ev microlock.Event) {
		log.hook(ev)
		if ev.Type == microlock.Retrying {
			retried <- struct{}{}
		}
	}), microlock.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(50 * time.Millisecond) }))
	errc := make(chan error, 1)
	go func() { errc <- m.Lock(ctx) }()
	for range 2 {
		select {
		case <-retried:
		case err := <-errc:
			t.Fatalf("Lock returned %v while etcd was unreachable", err)
		}
	}
	proxy.Heal()
	if err := <-errc; err != nil {
		t.Fatalf("Lock after etcd came back: %v", err)
	}
	for _, ev := range log.of(microlock.Retrying) {
		if ev.Err == nil || ev.Key != key {
			t.Fatalf("Retrying event without error or key: %+v", ev)
		}
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestLockRetriesNoLeader: with no quorum, a Lock retries "no leader" until
// the cluster has a leader again. TryLock, one attempt, fails at once.
func TestLockRetriesNoLeader(t *testing.T) {
	cl := etcdtest.Start(t, 3)
	survivor := cl.Members[0]
	c := cl.Client(t, survivor.ClientURL)
	key := testKey(t)
	ctx := ctxTimeout(t, 90*time.Second)
	for _, m := range cl.Members[1:] {
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	log := &eventLog{}
	m := newMutex(t, c, key, microlock.WithTTL(2*time.Second), microlock.OnEvent(log.hook))
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := m.TryLock(tctx)
	cancel()
	if err == nil || errors.Is(err, microlock.ErrLocked) {
		t.Fatalf("TryLock without quorum = %v, want an etcd error", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- m.Lock(ctx) }()
	for log.count(microlock.Retrying) < 2 {
		select {
		case err := <-errc:
			t.Fatalf("Lock returned %v without quorum", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, m := range cl.Members[1:] {
		if err := m.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		t.Fatalf("Lock after quorum came back: %v", err)
	}
	sawNoLeader := false
	for _, ev := range log.of(microlock.Retrying) {
		sawNoLeader = sawNoLeader || errors.Is(ev.Err, rpctypes.ErrNoLeader) || errors.Is(ev.Err, context.DeadlineExceeded)
	}
	if !sawNoLeader {
		t.Fatalf("Retrying events %v, want no-leader or timeout errors", log.of(microlock.Retrying))
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}
