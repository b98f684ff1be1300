package microlock_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

// TestMaxHoldEndsHungHolder: with WithMaxHold, fn's ctx is cancelled, for
// ErrLockLost and ErrMaxHold, once the limit is reached; and a holder whose
// fn ignores that and runs on cannot keep the lock: the next waiter takes it
// while fn still runs, and only after fn's ctx was cancelled.
func TestMaxHoldEndsHungHolder(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 60*time.Second)
	var order []string
	step := make(chan string, 4)
	bHolds := make(chan struct{})
	tokA := make(chan int64, 1)
	res := make(chan error, 1)
	reasons := make(chan microlock.LossReason, 1)
	go func() {
		res <- microlock.WithLock(ctx, c, key, func(ctx context.Context) error {
			m, _ := microlock.FromContext(ctx)
			tokA <- m.Token()
			<-ctx.Done()
			cause := context.Cause(ctx)
			if !errors.Is(cause, microlock.ErrLockLost) || !errors.Is(cause, microlock.ErrMaxHold) {
				step <- "cancelled for " + cause.Error()
			} else {
				step <- "A cancelled"
			}
			<-bHolds // hung: ignores the cancel until the next holder is in
			return nil
		}, microlock.WithNodeID("a"), microlock.WithTTL(2*time.Second), microlock.WithMaxHold(time.Second),
			microlock.OnEvent(func(ev microlock.Event) {
				if ev.Type == microlock.Lost {
					reasons <- ev.Reason
				}
			}))
	}()
	ta := recv(t, tokA, "A's hold")
	b := newMutex(t, c, key, microlock.WithNodeID("b"))
	go func() {
		err := b.Lock(ctx)
		if err != nil {
			step <- "B: " + err.Error()
			return
		}
		step <- "B acquired"
		close(bHolds)
	}()
	for len(order) < 2 {
		order = append(order, recv(t, step, "step"))
	}
	if order[0] != "A cancelled" || order[1] != "B acquired" {
		t.Fatalf("order %q, want A cancelled, then B acquired", order)
	}
	if b.Token() <= ta {
		t.Fatalf("B's token %d, not above A's %d", b.Token(), ta)
	}
	err := recv(t, res, "WithLock result")
	if !errors.Is(err, microlock.ErrLockLost) || !errors.Is(err, microlock.ErrMaxHold) {
		t.Fatalf("WithLock = %v, want ErrLockLost and ErrMaxHold", err)
	}
	if r := recv(t, reasons, "the Lost event"); r != microlock.LossMaxHold {
		t.Fatalf("Lost event's reason %v, want %v", r, microlock.LossMaxHold)
	}
}

// TestMaxHoldLead: each term of a leader with WithMaxHold ends at the limit,
// and Lead campaigns again: a new term with a higher token.
func TestMaxHoldLead(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx, cancel := context.WithCancel(ctxTimeout(t, 60*time.Second))
	terms := make(chan int64)
	causes := make(chan error, 3)
	res := runLead(t, ctx, c, key, func(ctx context.Context) error {
		m, _ := microlock.FromContext(ctx)
		select {
		case terms <- m.Token():
		case <-ctx.Done():
		}
		<-ctx.Done()
		select {
		case causes <- context.Cause(ctx):
		default:
		}
		return ctx.Err()
	}, microlock.WithTTL(2*time.Second), microlock.WithMaxHold(500*time.Millisecond), quickRetry())
	last := int64(0)
	for i := range 3 {
		tok := recv(t, terms, "term")
		if tok <= last {
			t.Fatalf("term %d token %d, not above %d", i+1, tok, last)
		}
		last = tok
		if i > 0 {
			if cause := <-causes; !errors.Is(cause, microlock.ErrMaxHold) {
				t.Fatalf("term %d ended for %v, want ErrMaxHold", i, cause)
			}
		}
	}
	cancel()
	if err := recv(t, res, "Lead result"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lead = %v", err)
	}
}

// TestMaxHoldNotReached: a hold that ends before the limit is released as
// usual, and its lease, the hold's own, is revoked.
func TestMaxHoldNotReached(t *testing.T) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	m := newMutex(t, c, key, microlock.WithMaxHold(time.Hour))
	var leases []clientv3.LeaseID
	for range 2 {
		if err := m.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		resp, err := c.Get(ctx, key+"/", clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("reading the hold's key: %v, %v", resp, err)
		}
		leases = append(leases, clientv3.LeaseID(resp.Kvs[0].Lease))
		if err := m.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if leases[0] == leases[1] {
		t.Fatalf("two holds shared lease %x", leases[0])
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// The last lease is revoked by Close; the first one by its own
	// goroutine, once its hold was released.
	for _, id := range leases {
		for {
			ttl, err := c.TimeToLive(ctx, id)
			if err != nil {
				t.Fatalf("lease %x of a released max-hold lock: %v", id, err)
			}
			if ttl.TTL == -1 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, bad := range []time.Duration{0, -time.Second} {
		if _, err := microlock.New(c, key, microlock.WithMaxHold(bad)); err == nil {
			t.Errorf("WithMaxHold(%v) accepted", bad)
		}
	}
}
