package microlock

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock/internal/etcdtest"
)

// TestAdmittedPastDeadline: a waiter whose process stood still past its
// lease's loss deadline just as etcd admitted it (the fault suite saw it: a
// worker stopped by SIGSTOP right after its predecessor left, woken 5 s
// later) must not report the lock as held: etcd may have expired its lease
// and admitted the next waiter while it stood still. Lock returns the loss
// instead. The stall is reproduced as it leaves the process: the deadline
// is in the past, and the timer that would declare it has not run yet.
func TestAdmittedPastDeadline(t *testing.T) {
	c, err := etcdtest.Launch(1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	holder, err := New(cli, "stall", WithTTL(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	// The waiter's lease (another TTL, so another lease) renews every
	// 20 s: no renewal moves its deadline during the test.
	waiter, err := New(cli, "stall", WithTTL(60*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close()
	locked := make(chan error, 1)
	go func() { locked <- waiter.Lock(ctx) }()
	// Wait until the waiter is in the queue, behind the holder.
	var l *lease
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the waiter did not queue")
		}
		leases.mu.Lock()
		l = leases.leases[leaseKey{client: cli, ttl: 60}]
		leases.mu.Unlock()
		resp, err := cli.Get(ctx, "stall/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if l != nil && resp.Count == 2 {
			break
		}
	}
	// The process "wakes up": its deadline has passed, its timer (armed
	// for the old deadline, about 40 s away) has not fired.
	l.mu.Lock()
	l.deadline = time.Now().Add(-time.Millisecond)
	l.mu.Unlock()
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	err = <-locked
	if !errors.Is(err, ErrLockLost) {
		t.Fatalf("Lock after the deadline passed: %v, want ErrLockLost", err)
	}
	if waiter.Token() != 0 {
		t.Fatalf("the waiter reports a hold (token %d) whose deadline had passed", waiter.Token())
	}
}
