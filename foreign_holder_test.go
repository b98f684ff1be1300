package microlock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

// TestForeignHolderValues: keys that someone else writes under a lock's
// prefix, with an empty value, binary garbage or 1 MiB, on a lease that
// expires, arriving while Watch and Lock are already running. Watch reports
// each one as the holder, byte for byte, and goes on; Lock waits behind it
// and takes the lock when it is gone; NoWait reports it.
func TestForeignHolderValues(t *testing.T) {
	c := client(t)
	values := map[string]string{
		"empty":   "",
		"garbage": "\x00\xff\xfe\x1b[2J\x1b]0;pwned\x07\r\n\u202e",
		"huge":    strings.Repeat("\xff", 1<<20),
	}
	for name, value := range values {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			key := testKey(t)
			ctx := ctxTimeout(t, 30*time.Second)
			events := watchKey(t, c, key)
			expectEvent(t, events, microlock.Unlocked, "", 0)

			// Written after Watch and Lock have started: both see it through
			// their etcd watches, not through a first read.
			lease, err := c.Grant(ctx, 2)
			if err != nil {
				t.Fatal(err)
			}
			put, err := c.Put(ctx, key+"/"+name+"/foreign", value, clientv3.WithLease(lease.ID))
			if err != nil {
				t.Fatal(err)
			}
			token := put.Header.Revision
			expectEvent(t, events, microlock.Locked, value, token)

			err = microlock.WithLock(ctx, c, key, func(context.Context) error {
				t.Error("fn ran while a foreign key held the lock")
				return nil
			}, microlock.NoWait())
			var ale *microlock.AlreadyLockedError
			if !errors.As(err, &ale) || ale.Holder != value || ale.Token != token {
				t.Fatalf("WithLock with NoWait = %.300v, want *AlreadyLockedError for the foreign holder", err)
			}
			t.Logf("AlreadyLockedError message: %d bytes for a %d-byte holder", len(err.Error()), len(value))

			m := newMutex(t, c, key, microlock.WithNodeID("after-foreign"))
			locked := make(chan error, 1)
			go func() { locked <- m.Lock(ctx) }()
			select {
			case err := <-locked:
				t.Fatalf("Lock returned %v while a foreign key held the lock", err)
			case <-time.After(500 * time.Millisecond):
			}
			// The foreign lease expires (2 s or etcd's minimum): its key goes.
			if err := <-locked; err != nil {
				t.Fatalf("Lock after the foreign lease expired: %v", err)
			}
			expectEvent(t, events, microlock.Locked, "after-foreign", m.Token())
			if m.Token() <= token {
				t.Fatalf("token %d after the foreign holder's %d", m.Token(), token)
			}
			if err := m.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
			expectEvent(t, events, microlock.Unlocked, "", 0)
		})
	}
}
