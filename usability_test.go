package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/microlock/microlock"
)

// TestReentrantWithLock: a WithLock nested on the same key and client, with
// fn's ctx, fails at once instead of waiting for itself.
func TestReentrantWithLock(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 10*time.Second)
	err := microlock.WithLock(ctx, c, key, func(ctx context.Context) error {
		outer, _ := microlock.FromContext(ctx)
		start := time.Now()
		err := microlock.WithLock(ctx, c, key, func(context.Context) error {
			t.Error("the nested fn ran")
			return nil
		})
		if d := time.Since(start); d > time.Second {
			t.Errorf("the nested WithLock took %v", d)
		}
		var already *microlock.AlreadyLockedError
		if !errors.As(err, &already) || already.Token != outer.Token() {
			t.Errorf("nested WithLock = %v, want *AlreadyLockedError with the outer token", err)
		}
		if !strings.Contains(err.Error(), "reentrant") {
			t.Errorf("nested WithLock's message %q does not say why", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Another key inside fn is fine.
	err = microlock.WithLock(ctx, c, key, func(ctx context.Context) error {
		return microlock.WithLock(ctx, c, key+"-other", func(context.Context) error { return nil })
	})
	if err != nil {
		t.Fatalf("WithLock on another key inside fn: %v", err)
	}
}

// TestOwnHoldMessage: TryLock on a Mutex that holds the lock says so.
func TestOwnHoldMessage(t *testing.T) {
	m := newMutex(t, client(t), testKey(t))
	ctx := ctxTimeout(t, 10*time.Second)
	if err := m.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(context.Context) error{"TryLock": m.TryLock, "Lock": m.Lock} {
		err := f(ctx)
		var already *microlock.AlreadyLockedError
		if !errors.As(err, &already) || already.Token != m.Token() || !strings.Contains(err.Error(), "this Mutex") {
			t.Errorf("%s on a held Mutex = %v, want *AlreadyLockedError saying this Mutex holds it", name, err)
		}
	}
}

// TestDoneContextNoRequest: a ctx that is already done makes no request, so
// the etcd client logs nothing, and the error matches ctx.Err().
func TestDoneContextNoRequest(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	c, err := clientv3.New(clientv3.Config{Endpoints: shared.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	key := testKey(t)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithTimeout(context.Background(), time.Nanosecond)
	defer cancel2()
	<-expired.Done()
	for _, ctx := range []context.Context{cancelled, expired} {
		m := newMutex(t, c, key)
		if err := m.Lock(ctx); !errors.Is(err, ctx.Err()) {
			t.Errorf("Lock = %v, want %v", err, ctx.Err())
		}
		if err := m.TryLock(ctx); !errors.Is(err, ctx.Err()) {
			t.Errorf("TryLock = %v, want %v", err, ctx.Err())
		}
		if err := microlock.WithLock(ctx, c, key, func(context.Context) error { return nil }); !errors.Is(err, ctx.Err()) {
			t.Errorf("WithLock = %v, want %v", err, ctx.Err())
		}
		if _, err := microlock.Watch(ctx, c, key); !errors.Is(err, ctx.Err()) {
			t.Errorf("Watch = %v, want %v", err, ctx.Err())
		}
	}
	for _, e := range logs.FilterLevelExact(zap.WarnLevel).All() {
		t.Errorf("the etcd client logged: %s %v", e.Message, e.ContextMap())
	}
	if n := len(logs.FilterLevelExact(zap.ErrorLevel).All()); n > 0 {
		t.Errorf("the etcd client logged %d errors", n)
	}
}

// TestOnEventCompose: several OnEvent options all run, in order; a later
// one does not switch off an earlier one (a metrics adapter beside the
// user's own hook).
func TestOnEventCompose(t *testing.T) {
	var mu sync.Mutex
	var got []string
	hook := func(name string) microlock.Option {
		return microlock.OnEvent(func(ev microlock.Event) {
			mu.Lock()
			got = append(got, name+":"+ev.Type.String())
			mu.Unlock()
		})
	}
	m := newMutex(t, client(t), testKey(t), hook("a"), hook("b"))
	ctx := ctxTimeout(t, 10*time.Second)
	if err := m.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"a:acquired", "b:acquired", "a:released", "b:released"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("hooks saw %q, want %q", got, want)
	}
}

// TestOwnCancellationsQuiet: what the library cancels on its own (a wait
// given up because ctx ended, the watches of a wait that ended, a release
// after fn's ctx was cancelled) makes the etcd client log no warning.
func TestOwnCancellationsQuiet(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	c, err := clientv3.New(clientv3.Config{Endpoints: shared.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	key := testKey(t)
	holder := newMutex(t, client(t), key)
	if err := holder.TryLock(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	// A wait that its ctx ends.
	wctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := newMutex(t, c, key).Lock(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock = %v, want DeadlineExceeded", err)
	}
	// A wait that ends with the lock, and a WithLock whose caller cancels
	// its ctx while fn runs.
	go func() {
		time.Sleep(200 * time.Millisecond)
		_ = holder.Unlock(context.Background())
	}()
	ctx, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	err = microlock.WithLock(ctx, c, key, func(ctx context.Context) error {
		cancel2()
		<-ctx.Done()
		return nil
	})
	if err != nil {
		t.Fatalf("WithLock: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // anything the etcd client logs late
	for _, e := range logs.All() {
		t.Errorf("the etcd client logged: %s %v", e.Message, e.ContextMap())
	}
}

// TestCancelledWording: every operation's error for a cancelled ctx reads
// "microlock: <operation> <key>: context canceled", wherever the operation
// was when it noticed.
func TestCancelledWording(t *testing.T) {
	key := testKey(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	m := newMutex(t, client(t), key)
	want := fmt.Sprintf("microlock: locking %q: context canceled", key)
	for name, err := range map[string]error{
		"Lock":     m.Lock(ctx),
		"TryLock":  m.TryLock(ctx),
		"WithLock": microlock.WithLock(ctx, client(t), key, func(context.Context) error { return nil }),
	} {
		if err == nil || err.Error() != want {
			t.Errorf("%s = %v, want %q", name, err, want)
		}
	}
	if _, err := microlock.Watch(ctx, client(t), key); err == nil || err.Error() != fmt.Sprintf("microlock: watching %q: context canceled", key) {
		t.Errorf("Watch = %v", err)
	}
}
