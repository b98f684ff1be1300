package microlock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/microlock/microlock"
)

// TestProclaim: the holder changes its value; Watch, Holder and etcd's
// Election.Leader see the new value with the same token. After Unlock,
// Proclaim answers ErrNotOwner; a bad value is refused.
func TestProclaim(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	events := watchKey(t, c, key)
	expectEvent(t, events, microlock.Unlocked, "", 0)
	m := newMutex(t, c, key, microlock.WithNodeID("node-1"))
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	tok := m.Token()
	expectEvent(t, events, microlock.Locked, "node-1", tok)

	for i, v := range []string{"node-1 at 10.0.0.1:80", "node-1 at 10.0.0.2:80"} {
		if err := m.Proclaim(ctx, v); err != nil {
			t.Fatalf("Proclaim %d: %v", i, err)
		}
		expectEvent(t, events, microlock.Locked, v, tok)
		if ev, err := microlock.Holder(ctx, c, key); err != nil || ev.Holder != v || ev.Token != tok {
			t.Fatalf("Holder after Proclaim = %+v, %v", ev, err)
		}
	}
	s, err := concurrency.NewSession(c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	resp, err := concurrency.NewElection(s, key).Leader(ctx)
	if err != nil || string(resp.Kvs[0].Value) != "node-1 at 10.0.0.2:80" || resp.Kvs[0].CreateRevision != tok {
		t.Fatalf("Election.Leader after Proclaim = %v, %v", resp, err)
	}
	if m.Token() != tok {
		t.Fatalf("token changed by Proclaim: %d, was %d", m.Token(), tok)
	}

	for _, bad := range []string{"", " ", "\xff", strings.Repeat("x", microlock.MaxNodeIDLen+1)} {
		if err := m.Proclaim(ctx, bad); err == nil || errors.Is(err, microlock.ErrNotOwner) || !strings.HasPrefix(err.Error(), "microlock: ") {
			t.Errorf("Proclaim(%q) = %v, want a bad-value error", bad, err)
		}
	}
	var noCtx context.Context // the bad input under test
	if err := m.Proclaim(noCtx, "v"); err == nil {
		t.Error("Proclaim(nil ctx) succeeded")
	}

	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, events, microlock.Unlocked, "", 0)
	if err := m.Proclaim(ctx, "late"); !errors.Is(err, microlock.ErrNotOwner) || errors.Is(err, microlock.ErrLockLost) {
		t.Fatalf("Proclaim after Unlock = %v, want ErrNotOwner only", err)
	}
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("Proclaim after Unlock wrote a key: %q", keys)
	}
}

// TestProclaimAfterLoss: once the hold's key is gone, Proclaim answers
// ErrNotOwner and ErrLockLost, and writes nothing back.
func TestProclaimAfterLoss(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	var log eventLog
	m := newMutex(t, c, key, microlock.OnEvent(log.hook))
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx, keysUnder(t, c, key)[0]); err != nil {
		t.Fatal(err)
	}
	err := m.Proclaim(ctx, "after the loss")
	if !errors.Is(err, microlock.ErrNotOwner) || !errors.Is(err, microlock.ErrLockLost) {
		t.Fatalf("Proclaim after the key was deleted = %v, want ErrNotOwner and ErrLockLost", err)
	}
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("Proclaim after the loss wrote a key: %q", keys)
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("hold still live after Proclaim found its key gone")
	}
	if !errors.Is(m.Err(), microlock.ErrLockLost) {
		t.Fatalf("Err() = %v, want ErrLockLost", m.Err())
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if n := log.count(microlock.Lost); n != 1 {
		t.Fatalf("%d Lost events, want 1", n)
	}
}
