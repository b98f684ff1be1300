package bench

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/microlock/microlock"
)

// benchTTL is the lease TTL both libraries ask for, except in the held-locks
// benchmark.
const benchTTL = 10 * time.Second

// opTimeout bounds one lock operation in a benchmark: long enough for any
// healthy etcd, short enough that a hang fails the run instead of stalling it.
const opTimeout = 30 * time.Second

// locker is what microlock's Mutex and etcd's concurrency.Mutex have in
// common, so that both run the very same loops.
type locker interface {
	Lock(ctx context.Context) error
	Unlock(ctx context.Context) error
}

// newMicrolock returns a microlock Mutex on key, closed when the benchmark
// function returns. It takes and releases the lock once, so that the
// client's lease is granted before the clock starts, as etcd's Session is.
func newMicrolock(b *testing.B, cli *clientv3.Client, key string) *microlock.Mutex {
	b.Helper()
	m, err := microlock.New(cli, key, microlock.WithTTL(benchTTL))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = m.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	if err := m.Lock(ctx); err != nil {
		b.Fatal(err)
	}
	if err := m.Unlock(ctx); err != nil {
		b.Fatal(err)
	}
	return m
}

// newSession returns an etcd concurrency Session on cli, closed (its lease
// revoked) when the benchmark function returns.
func newSession(b *testing.B, cli *clientv3.Client) *concurrency.Session {
	b.Helper()
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(benchTTL/time.Second)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

// freshKey returns a key that no earlier call of a benchmark function used,
// under the benchmark's name, with parts appended. etcd keeps the deleted keys
// of past lock cycles in its index until a compaction (the harness's etcd
// never compacts), and microlock writes a key of a new name for every hold, so
// a key reused from call to call would carry the cost of every earlier call's
// cycles into the next; BenchmarkGrowth measures that cost by itself.
func freshKey(b *testing.B, parts ...string) string {
	return strings.Join(append([]string{"bench", b.Name(), strconv.FormatInt(time.Now().UnixNano(), 36)}, parts...), "/")
}

// benchCtx returns a context for a whole benchmark function, cancelled when
// it returns.
func benchCtx(b *testing.B) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	return ctx
}
