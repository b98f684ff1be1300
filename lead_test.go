package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

// quickRetry makes Lead campaign again soon after a lost term.
func quickRetry() microlock.Option {
	return microlock.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Millisecond) })
}

// runLead runs Lead on its own goroutine; the returned channel gives its
// result, and the test waits for it at the end.
func runLead(t *testing.T, ctx context.Context, c *clientv3.Client, key string, fn func(context.Context) error, opts ...microlock.Option) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	res := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		res <- microlock.Lead(ctx, c, key, fn, opts...)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return res
}

// recv receives from ch or fails the test after 20 s.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(20 * time.Second):
		t.Fatalf("no %s in 20 s", what)
	}
	panic("unreachable")
}

// ownsKey reports whether the term's Mutex still has its key in etcd: a Txn
// guarded by IsOwner succeeds.
func ownsKey(ctx context.Context, c *clientv3.Client) error {
	m, ok := microlock.FromContext(ctx)
	if !ok {
		return errors.New("FromContext found no Mutex in fn's ctx")
	}
	resp, err := c.Txn(ctx).If(m.IsOwner()).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("term %d started without its key", m.Token())
	}
	return nil
}

// TestLeadTermPerLoss: each loss of leadership (the leader's key deleted)
// ends the term, with fn's ctx cancelled for ErrLockLost, and Lead campaigns
// again: one term per loss, tokens strictly increasing, each term backed by
// its key, and no goroutine per term left behind.
func TestLeadTermPerLoss(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx, cancel := context.WithCancel(ctxTimeout(t, 60*time.Second))
	var log eventLog
	type term struct {
		token      int64
		goroutines int
	}
	terms := make(chan term)
	res := runLead(t, ctx, c, key, func(ctx context.Context) error {
		if err := ownsKey(ctx, c); err != nil {
			return err
		}
		m, _ := microlock.FromContext(ctx)
		select {
		case terms <- term{m.Token(), runtime.NumGoroutine()}:
		case <-ctx.Done():
			return ctx.Err()
		}
		<-ctx.Done()
		if cause := context.Cause(ctx); !errors.Is(cause, microlock.ErrLockLost) && !errors.Is(cause, context.Canceled) {
			return fmt.Errorf("fn's ctx ended for %v", cause)
		}
		return ctx.Err()
	}, microlock.WithNodeID("leader"), microlock.OnEvent(log.hook), quickRetry())

	const losses = 6
	var seen []term
	for i := 0; ; i++ {
		tm := recv(t, terms, fmt.Sprintf("term %d", i+1))
		if len(seen) > 0 && tm.token <= seen[len(seen)-1].token {
			t.Fatalf("term %d has token %d, not above %d", i+1, tm.token, seen[len(seen)-1].token)
		}
		seen = append(seen, tm)
		if i == losses {
			break
		}
		if _, err := c.Delete(ctx, key+"/", clientv3.WithPrefix()); err != nil {
			t.Fatal(err)
		}
	}
	// A goroutine left per term would add one per loss.
	if first, last := seen[1].goroutines, seen[losses].goroutines; last > first+2 {
		t.Errorf("goroutines at term 2: %d, at term %d: %d", first, losses+1, last)
	}
	cancel()
	if err := recv(t, res, "Lead result"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lead after cancel = %v, want context.Canceled", err)
	}
	if n := log.count(microlock.Acquired); n != losses+1 {
		t.Errorf("%d Acquired events, want %d", n, losses+1)
	}
	if n := log.count(microlock.Lost); n != losses {
		t.Errorf("%d Lost events, want %d", n, losses)
	}
	if n := log.count(microlock.Released); n != 1 {
		t.Errorf("%d Released events, want 1 (the resign on cancel)", n)
	}
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("keys left: %q", keys)
	}
}

// TestLeadWaitsForFn: after a loss, Lead does not campaign again until fn
// has returned, and on cancel it resigns only after fn has returned.
func TestLeadWaitsForFn(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx, cancel := context.WithCancel(ctxTimeout(t, 60*time.Second))
	var log eventLog
	started := make(chan int64, 2)
	sawEnd := make(chan struct{}, 2)
	release := make(chan struct{}, 2)
	res := runLead(t, ctx, c, key, func(ctx context.Context) error {
		m, _ := microlock.FromContext(ctx)
		started <- m.Token()
		<-ctx.Done()
		sawEnd <- struct{}{}
		<-release // fn takes its time to stop
		return nil
	}, microlock.WithNodeID("slow"), microlock.OnEvent(log.hook), quickRetry())

	tok1 := recv(t, started, "first term")
	if _, err := c.Delete(ctx, key+"/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	recv(t, sawEnd, "loss seen by fn")
	// Lead would campaign again within 10 ms if it did not wait for fn.
	time.Sleep(500 * time.Millisecond)
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("campaigned again while fn still ran: %q", keys)
	}
	if n := log.count(microlock.Acquired); n != 1 {
		t.Fatalf("%d terms started while the first one's fn still ran", n)
	}
	release <- struct{}{}
	tok2 := recv(t, started, "second term")
	if tok2 <= tok1 {
		t.Fatalf("second term's token %d, not above %d", tok2, tok1)
	}

	cancel()
	recv(t, sawEnd, "cancel seen by fn")
	time.Sleep(300 * time.Millisecond)
	ev, err := microlock.Holder(context.Background(), c, key)
	if err != nil || ev.Type != microlock.Locked || ev.Token != tok2 {
		t.Fatalf("Holder while fn still runs after cancel = %+v, %v; want the term's key still there", ev, err)
	}
	release <- struct{}{}
	if err := recv(t, res, "Lead result"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lead = %v, want context.Canceled", err)
	}
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("keys left after the resign: %q", keys)
	}
}

// TestLeadFnResult: fn's nil ends the term and Lead campaigns again; fn's
// error resigns and is returned.
func TestLeadFnResult(t *testing.T) {
	c := client(t)
	key := testKey(t)
	var log eventLog
	errStop := errors.New("stop leading")
	var tokens []int64
	err := microlock.Lead(ctxTimeout(t, 30*time.Second), c, key, func(ctx context.Context) error {
		if err := ownsKey(ctx, c); err != nil {
			return err
		}
		m, _ := microlock.FromContext(ctx)
		tokens = append(tokens, m.Token())
		if len(tokens) == 3 {
			return errStop
		}
		return nil
	}, microlock.OnEvent(log.hook))
	if !errors.Is(err, errStop) {
		t.Fatalf("Lead = %v, want fn's error", err)
	}
	if len(tokens) != 3 || tokens[0] >= tokens[1] || tokens[1] >= tokens[2] {
		t.Fatalf("terms' tokens %v, want 3 increasing", tokens)
	}
	if a, r := log.count(microlock.Acquired), log.count(microlock.Released); a != 3 || r != 3 {
		t.Fatalf("%d Acquired, %d Released events, want 3 of each", a, r)
	}
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("keys left: %q", keys)
	}
}

// TestLeadCancelledWhileCampaigning: a candidate whose ctx ends while it
// waits returns ctx's error and leaves no key.
func TestLeadCancelledWhileCampaigning(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	m := newMutex(t, c, key, microlock.WithNodeID("holder"))
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	lctx, cancel := context.WithCancel(ctx)
	res := runLead(t, lctx, c, key, func(context.Context) error {
		return errors.New("led while another node held the key")
	})
	for len(keysUnder(t, c, key)) < 2 {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := recv(t, res, "Lead result"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lead = %v, want context.Canceled", err)
	}
	if keys := keysUnder(t, c, key); len(keys) != 1 {
		t.Fatalf("keys after the candidate left: %q, want the holder's only", keys)
	}
}

// TestLeadBadInput: bad arguments and options fail before any I/O.
func TestLeadBadInput(t *testing.T) {
	c := client(t)
	fn := func(context.Context) error { return nil }
	ctx := context.Background()
	var noCtx context.Context // the bad input under test
	for name, call := range map[string]func() error{
		"nil ctx":    func() error { return microlock.Lead(noCtx, c, "k", fn) },
		"nil client": func() error { return microlock.Lead(ctx, nil, "k", fn) },
		"empty key":  func() error { return microlock.Lead(ctx, c, "", fn) },
		"nil fn":     func() error { return microlock.Lead(ctx, c, "k", nil) },
		"bad TTL":    func() error { return microlock.Lead(ctx, c, "k", fn, microlock.WithTTL(0)) },
		"max hold":   func() error { return microlock.Lead(ctx, c, "k", fn, microlock.WithMaxHold(0)) },
	} {
		if err := call(); err == nil || !strings.HasPrefix(err.Error(), "microlock: ") {
			t.Errorf("%s: %v, want a microlock error", name, err)
		}
	}
	// A leader is one holder: the admission rules that admit several are
	// refused, not run (a term with fn returning nil would otherwise run
	// until the deadline).
	short, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for name, opt := range map[string]microlock.Option{"shared": microlock.Shared(), "limit": microlock.WithLimit(2)} {
		err := microlock.Lead(short, c, testKey(t), fn, opt)
		if err == nil || !strings.Contains(err.Error(), "cannot be combined") || short.Err() != nil {
			t.Errorf("%s: %v, want Lead refused at once", name, err)
		}
	}
}

// TestLeadPanic: a panic in fn goes on up with its own value, and the
// leadership is resigned on the way.
func TestLeadPanic(t *testing.T) {
	c := client(t)
	key := testKey(t)
	defer func() {
		if r := recover(); r != "boom" {
			t.Fatalf("recovered %v, want fn's panic value", r)
		}
		if keys := keysUnder(t, c, key); len(keys) != 0 {
			t.Fatalf("keys left after the panic: %q", keys)
		}
	}()
	_ = microlock.Lead(ctxTimeout(t, 30*time.Second), c, key, func(context.Context) error { panic("boom") })
	t.Fatal("Lead returned after fn panicked")
}

// TestLeadBackoffStop: when the WithBackoff policy gives up after a lost
// term, Lead returns the loss.
func TestLeadBackoffStop(t *testing.T) {
	c := client(t)
	key := testKey(t)
	var terms int
	err := microlock.Lead(ctxTimeout(t, 30*time.Second), c, key, func(ctx context.Context) error {
		terms++
		if _, err := c.Delete(ctx, key+"/", clientv3.WithPrefix()); err != nil {
			return err
		}
		<-ctx.Done()
		return ctx.Err()
	}, microlock.WithBackoff(func() backoff.BackOff { return &backoff.StopBackOff{} }))
	if !errors.Is(err, microlock.ErrLockLost) || terms != 1 {
		t.Fatalf("Lead = %v after %d terms, want the loss after 1", err, terms)
	}
}
