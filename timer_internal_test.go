package microlock

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestWithTimer pins what the lock path relies on from withTimer: its
// context ends after the duration without carrying a deadline (gRPC would
// send one to the server), an ended timer turns the client's
// context.Canceled into a transient timeout, and a cancel of the parent stays
// a cancel, which is not retried.
func TestWithTimer(t *testing.T) {
	ctx, cancel := withTimer(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, ok := ctx.Deadline(); ok {
		t.Fatal("withTimer's context has a deadline")
	}
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("withTimer's context did not end")
	}
	err := timedOut(ctx, context.Canceled)
	if !errors.Is(err, context.DeadlineExceeded) || !transient(err) || err.Error() != context.DeadlineExceeded.Error() {
		t.Errorf("timedOut after the timer = %v (transient %v), want a transient deadline error", err, transient(err))
	}
	if timedOut(ctx, nil) != nil {
		t.Error("timedOut(ctx, nil) is not nil")
	}

	parent, cancelParent := context.WithCancel(context.Background())
	ctx, cancel = withTimer(parent, time.Hour)
	defer cancel()
	cancelParent()
	<-ctx.Done()
	if err := timedOut(ctx, context.Canceled); err != context.Canceled || transient(err) {
		t.Errorf("timedOut after the parent's cancel = %v, want context.Canceled, not transient", err)
	}

	ctx, cancel = withTimer(context.Background(), 10*time.Millisecond)
	cancel()
	time.Sleep(30 * time.Millisecond)
	if cause := context.Cause(ctx); cause != context.Canceled {
		t.Errorf("after cancel, the cause is %v: the timer fired anyway", cause)
	}
}
