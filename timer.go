package microlock

import (
	"context"
	"errors"
	"time"
)

// errTimedOut is the cause of a context that withTimer ended. It matches
// context.DeadlineExceeded, so transient counts it as worth a retry.
var errTimedOut = timedOutError{}

type timedOutError struct{}

func (timedOutError) Error() string   { return context.DeadlineExceeded.Error() }
func (timedOutError) Is(t error) bool { return t == context.DeadlineExceeded }

// withTimer is context.WithTimeout for a request on the lock path, without
// the deadline. gRPC sends a context's deadline to the server with the
// request and the server arms a timer of its own for it: together about
// 1.5% of an uncontended lock cycle, on both sides. A cancel reaches the
// server all the same (the stream is reset), so a timer that cancels does
// the job for less. After the request, pass its error through timedOut.
func withTimer(parent context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	t := time.AfterFunc(d, func() { cancel(errTimedOut) })
	return ctx, func() {
		t.Stop()
		cancel(context.Canceled)
	}
}

// timedOut returns errTimedOut if err came from ctx, made by withTimer,
// running out; the etcd client reports that as context.Canceled. Any other
// error, a cancel of the parent context included, comes back as it is.
func timedOut(ctx context.Context, err error) error {
	if err != nil && errors.Is(context.Cause(ctx), errTimedOut) {
		return errTimedOut
	}
	return err
}
