package testkit

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

// Ctx returns a context that ends after d or with the test.
func Ctx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Mutex returns a new Mutex on key, closed at the end of the test.
func Mutex(t testing.TB, c *clientv3.Client, key string, opts ...microlock.Option) *microlock.Mutex {
	t.Helper()
	m, err := microlock.New(c, key, opts...)
	if err != nil {
		t.Fatalf("New(%q): %v", key, err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// WaitFor polls cond until it holds, and fails the test if that takes more
// than 20 s: what is what it waited for.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
