package microlock_test

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/microlock/microlock"
)

// TestHolder: a one-shot read sees no holder, a microlock holder, an etcd
// Election leader and etcdctl lock, each with its value and token.
func TestHolder(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	expect := func(what string, typ microlock.EventType, holder string, token int64) {
		t.Helper()
		ev, err := microlock.Holder(ctx, c, key)
		if err != nil || ev.Type != typ || ev.Holder != holder || ev.Token != token || ev.Key != key {
			t.Fatalf("Holder with %s = %+v, %v; want %v %q token %d", what, ev, err, typ, holder, token)
		}
	}
	expect("no holder", microlock.Unlocked, "", 0)

	m := newMutex(t, c, key, microlock.WithNodeID("node-m"))
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	expect("a microlock holder", microlock.Locked, "node-m", m.Token())
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	expect("the holder gone", microlock.Unlocked, "", 0)

	s, err := concurrency.NewSession(c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e := concurrency.NewElection(s, key)
	if err := e.Campaign(ctx, "etcd-leader"); err != nil {
		t.Fatal(err)
	}
	expect("an etcd Election leader", microlock.Locked, "etcd-leader", e.Rev())
	if err := e.Proclaim(ctx, "etcd-leader v2"); err != nil {
		t.Fatal(err)
	}
	expect("the leader's Proclaim", microlock.Locked, "etcd-leader v2", e.Rev())
	if err := e.Resign(ctx); err != nil {
		t.Fatal(err)
	}

	p := startEtcdctl(t, "lock", key)
	if err := p.acquired.wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	_, token := holderOf(t, c, key)
	ev, err := microlock.Holder(ctx, c, key)
	if err != nil || ev.Type != microlock.Locked || ev.Token != token {
		t.Fatalf("Holder with etcdctl lock = %+v, %v; want token %d", ev, err, token)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(t)
	expect("etcdctl gone", microlock.Unlocked, "", 0)
}

// TestHolderBadInput: bad arguments fail without I/O, with a microlock
// error; a cancelled ctx gives ctx's error.
func TestHolderBadInput(t *testing.T) {
	c := client(t)
	var noCtx context.Context // the bad input under test
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for name, call := range map[string]func() error{
		"nil ctx":    func() error { _, err := microlock.Holder(noCtx, c, "k"); return err },
		"nil client": func() error { _, err := microlock.Holder(context.Background(), nil, "k"); return err },
		"empty key":  func() error { _, err := microlock.Holder(context.Background(), c, ""); return err },
		"cancelled":  func() error { _, err := microlock.Holder(cancelled, c, "k"); return err },
	} {
		if err := call(); err == nil || !strings.HasPrefix(err.Error(), "microlock: ") {
			t.Errorf("%s: %v, want a microlock error", name, err)
		}
	}
}
