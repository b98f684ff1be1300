package microlock_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

// TestSameNodeIDIsNotOwnership: a lock belongs to the hold that took it (its
// key and create revision), not to a node ID. Other Mutex values with the
// same node ID, on another client or on the holder's own client (and so on
// its lease), cannot release or renew it; neither can a former holder whose
// hold was lost and then taken over by a node with the same ID.
func TestSameNodeIDIsNotOwnership(t *testing.T) {
	const id = "worker-1"
	c1, c2 := client(t), client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)

	holder := newMutex(t, c1, key, microlock.WithNodeID(id))
	if err := holder.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	token := holder.Token()
	heldKeys := keysUnder(t, c1, key)

	others := map[string]*microlock.Mutex{
		"other client": newMutex(t, c2, key, microlock.WithNodeID(id)),
		"same client":  newMutex(t, c1, key, microlock.WithNodeID(id)),
	}
	for name, m := range others {
		checkNotOwner(ctx, t, c1, key, name, m, id, token)
	}
	if got := keysUnder(t, c1, key); !slices.Equal(got, heldKeys) {
		t.Fatalf("queue after the others' attempts: %q, want %q", got, heldKeys)
	}
	if err := holder.Err(); err != nil || holder.Token() != token {
		t.Fatalf("holder after the others' attempts: err %v, token %d; want held with token %d", err, holder.Token(), token)
	}

	// The holder's key vanishes, as when its lease expires; a node with the
	// same ID takes the lock. The former holder cannot release or renew it.
	if _, err := c2.Delete(ctx, heldKeys[0]); err != nil {
		t.Fatal(err)
	}
	select {
	case <-holder.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the holder did not notice its key was deleted")
	}
	successor := others["other client"]
	if err := successor.TryLock(ctx); err != nil {
		t.Fatalf("takeover by the same node ID: %v", err)
	}
	if err := holder.Unlock(ctx); !errors.Is(err, microlock.ErrNotOwner) || !errors.Is(err, microlock.ErrLockLost) {
		t.Errorf("former holder's Unlock = %v, want ErrNotOwner and ErrLockLost", err)
	}
	if err := holder.Renew(ctx); !errors.Is(err, microlock.ErrNotOwner) {
		t.Errorf("former holder's Renew = %v, want ErrNotOwner", err)
	}
	resp, err := c1.Txn(ctx).If(holder.IsOwner()).Then(clientv3.OpPut(key+"-fenced", "stale")).Commit()
	if err != nil || resp.Succeeded {
		t.Errorf("former holder's fenced write = %v, succeeded %v; want refused", err, resp != nil && resp.Succeeded)
	}
	if err := successor.Err(); err != nil || successor.Token() <= token {
		t.Fatalf("successor after the former holder's attempts: err %v, token %d; want held with a token above %d", err, successor.Token(), token)
	}
	if got := keysUnder(t, c1, key); len(got) != 1 || got[0] == heldKeys[0] {
		t.Fatalf("queue = %q, want only the successor's key", got)
	}
	if err := successor.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if resp, err := c1.Get(ctx, key+"-fenced"); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("a fenced write landed: %v, %v", resp, err)
	}
}

// checkNotOwner checks that m, named name, with the holder's node ID id but
// not its hold (token), can neither release, renew nor take the lock on
// key, nor write through its IsOwner guard.
func checkNotOwner(ctx context.Context, t *testing.T, c *clientv3.Client, key, name string, m *microlock.Mutex, id string, token int64) {
	t.Helper()
	if err := m.Unlock(ctx); !errors.Is(err, microlock.ErrNotOwner) {
		t.Errorf("%s: Unlock = %v, want ErrNotOwner", name, err)
	}
	if err := m.Renew(ctx); !errors.Is(err, microlock.ErrNotOwner) {
		t.Errorf("%s: Renew = %v, want ErrNotOwner", name, err)
	}
	// The holder's name is ours, yet the lock is not.
	var ale *microlock.AlreadyLockedError
	if err := m.TryLock(ctx); !errors.As(err, &ale) || ale.Holder != id || ale.Token != token {
		t.Errorf("%s: TryLock = %v, want *AlreadyLockedError{Holder: %q, Token: %d}", name, err, id, token)
	}
	if err := m.Unlock(ctx); !errors.Is(err, microlock.ErrNotOwner) {
		t.Errorf("%s: Unlock after a failed TryLock = %v, want ErrNotOwner", name, err)
	}
	if m.Token() != 0 {
		t.Errorf("%s: Token = %d without a hold", name, m.Token())
	}
	// Its IsOwner guard is false: a fenced write cannot land.
	resp, err := c.Txn(ctx).If(m.IsOwner()).Then(clientv3.OpPut(key+"-fenced", name)).Commit()
	if err != nil || resp.Succeeded {
		t.Errorf("%s: fenced write = %v, succeeded %v; want refused", name, err, resp != nil && resp.Succeeded)
	}
}
