package microlock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

// TestBadInput is property 8: bad input is an error that starts with
// "microlock:", before any I/O, never a panic.
func TestBadInput(t *testing.T) {
	c := client(t)
	key := testKey(t)
	fn := func(context.Context) error { return nil }
	ctx := context.Background()
	cases := []struct {
		name   string
		client *clientv3.Client
		key    string
		opts   []microlock.Option
	}{
		{"nil client", nil, key, nil},
		{"empty key", c, "", nil},
		{"ttl zero", c, key, []microlock.Option{microlock.WithTTL(0)}},
		{"ttl below a second", c, key, []microlock.Option{microlock.WithTTL(999 * time.Millisecond)}},
		{"negative ttl", c, key, []microlock.Option{microlock.WithTTL(-time.Second)}},
		{"empty node ID", c, key, []microlock.Option{microlock.WithNodeID("")}},
		{"blank node ID", c, key, []microlock.Option{microlock.WithNodeID(" \t\n")}},
		{"invalid UTF-8 node ID", c, key, []microlock.Option{microlock.WithNodeID("\xff\xfe")}},
		{"huge node ID", c, key, []microlock.Option{microlock.WithNodeID(strings.Repeat("n", microlock.MaxNodeIDLen+1))}},
		{"nil option", c, key, []microlock.Option{nil}},
		{"nil hook", c, key, []microlock.Option{microlock.OnEvent(nil)}},
		{"nil backoff", c, key, []microlock.Option{microlock.WithBackoff(nil)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			check := func(what string, err error) {
				t.Helper()
				if err == nil || !strings.HasPrefix(err.Error(), "microlock: ") {
					t.Errorf("%s = %v, want an error starting with \"microlock: \"", what, err)
				}
			}
			_, err := microlock.New(tc.client, tc.key, tc.opts...)
			check("New", err)
			check("WithLock", microlock.WithLock(ctx, tc.client, tc.key, fn, tc.opts...))
			if len(tc.opts) == 0 {
				_, err = microlock.Watch(ctx, tc.client, tc.key)
				check("Watch", err)
			}
		})
	}
	t.Run("nil fn", func(t *testing.T) {
		if err := microlock.WithLock(ctx, c, key, nil); err == nil || !strings.HasPrefix(err.Error(), "microlock: ") {
			t.Fatalf("WithLock(nil fn) = %v", err)
		}
	})
	t.Run("nil ctx", func(t *testing.T) {
		m := newMutex(t, c, key)
		var noCtx context.Context // the bad input under test
		for name, err := range map[string]error{
			"Lock":     m.Lock(noCtx),
			"TryLock":  m.TryLock(noCtx),
			"Unlock":   m.Unlock(noCtx),
			"Renew":    m.Renew(noCtx),
			"WithLock": microlock.WithLock(noCtx, c, key, fn),
		} {
			if err == nil || !strings.HasPrefix(err.Error(), "microlock: ") {
				t.Errorf("%s(nil) = %v", name, err)
			}
		}
	})
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("bad input left keys: %q", keys)
	}
}

// TestKeyRejectedByEtcd: a key too large for etcd is a permanent error,
// returned at once without retries, leaving nothing behind.
func TestKeyRejectedByEtcd(t *testing.T) {
	c := client(t)
	key := testKey(t) + strings.Repeat("k", 2<<20)
	log := &eventLog{}
	ctx := ctxTimeout(t, 20*time.Second)
	for name, lock := range map[string]func(*microlock.Mutex) error{
		"Lock":    func(m *microlock.Mutex) error { return m.Lock(ctx) },
		"TryLock": func(m *microlock.Mutex) error { return m.TryLock(ctx) },
	} {
		m := newMutex(t, c, key, microlock.OnEvent(log.hook), microlock.WithBackoff(func() backoff.BackOff {
			return backoff.NewConstantBackOff(10 * time.Millisecond)
		}))
		err := lock(m)
		if err == nil || !strings.HasPrefix(err.Error(), "microlock: ") || len(err.Error()) > 1000 {
			t.Fatalf("%s of an oversized key = %.300v, want a short microlock: error", name, err)
		}
		if errors.Is(err, context.DeadlineExceeded) || log.count(microlock.Retrying) != 0 {
			t.Fatalf("%s retried a permanent error: %v", name, err)
		}
	}
	resp, err := c.Get(ctx, testKey(t), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("keys left: %v, %v", resp, err)
	}
}
