package microlock

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// WithLock takes the lock on key, runs fn while holding it, and releases it.
//
// It waits for the lock in arrival order (or, with NoWait, fails at once with
// *AlreadyLockedError), retrying transient etcd errors with the WithBackoff
// policy. fn runs in the caller's goroutine with a context derived from ctx
// that is cancelled as soon as ownership is lost, strictly before etcd could
// let another node take the lock, with context.Cause wrapping ErrLockLost.
// Inside fn, FromContext returns the Mutex, for its Token and IsOwner.
//
// The lock is released when fn returns or panics (the panic goes on up with
// its own value), even when ctx is already cancelled: the release uses its own
// timeout, ReleaseTimeout. If the release fails, the key is deleted in the
// background or expires with its lease.
//
// WithLock returns fn's error as it is. If the lock was lost while fn ran, the
// error wraps ErrLockLost (and fn's error, if any). A failed release is
// returned when fn succeeded.
//
// Locks are not reentrant: a WithLock on the same key and client inside fn,
// with fn's ctx, fails at once with *AlreadyLockedError instead of waiting
// for itself.
//
// Bad arguments and options are reported before any I/O. The lease behind
// the lock is shared with other locks of the same client and TTL, and kept
// for a few seconds after use, so that a loop of WithLock calls costs two
// etcd requests per call.
func WithLock(ctx context.Context, client *clientv3.Client, key string, fn func(ctx context.Context) error, opts ...Option) (err error) {
	if ctx == nil {
		return errNilContext
	}
	if fn == nil {
		return errors.New("microlock: nil fn")
	}
	if outer, ok := FromContext(ctx); ok && outer.client == client && outer.key == key {
		if h := outer.current(); h != nil {
			// Waiting would wait for ourselves until ctx ends.
			return &AlreadyLockedError{Key: key, Holder: outer.opts.nodeID, Token: h.rev.Load(),
				note: "held by the WithLock whose fn this ctx comes from (locks are not reentrant)"}
		}
	}
	m, err := New(client, key, opts...)
	if err != nil {
		return err
	}
	if err = m.Lock(ctx); err != nil { // with NoWait, at most one try per retry
		_ = m.close(false)
		return err
	}

	h := m.last() // live, or lost already: then fnContext's is cancelled at once
	fnCtx, cancel := m.fnContext(ctx, h)
	defer func() {
		// Runs when fn returns and when it panics; a panic carries on up
		// after this with its own value.
		lost := h.lostCause()
		cancel(context.Canceled)
		uerr := m.unlockAfter(ctx)
		_ = m.close(false)
		if lost == nil {
			lost = h.lostCause() // lost between fn's return and the release
		}
		switch {
		case lost != nil && err != nil && !errors.Is(err, ErrLockLost):
			err = fmt.Errorf("%w (fn returned: %w)", lost, err)
		case lost != nil && err == nil:
			err = lost
		case err == nil && uerr != nil:
			err = uerr
		}
	}()
	return fn(fnCtx)
}

type mutexKey struct{}

// fnContext is the context of the work done under h (WithLock's fn, a term
// of Lead): FromContext finds m in it, and it ends when h does, at once if h
// is lost already.
func (m *Mutex) fnContext(ctx context.Context, h *hold) (context.Context, context.CancelCauseFunc) {
	fnCtx, cancel := context.WithCancelCause(context.WithValue(ctx, mutexKey{}, m))
	h.link(cancel) // ends with the work: no need to unlink
	return fnCtx, cancel
}

// unlockAfter releases the lock once the work under it returned, even when
// ctx is done, within ReleaseTimeout. A release that etcd does not
// acknowledge is reported to OnEvent as Released with Err; the key is
// deleted in the background or expires with its lease.
func (m *Mutex) unlockAfter(ctx context.Context) error {
	rctx, cancel := withTimer(context.WithoutCancel(ctx), ReleaseTimeout)
	defer cancel()
	return m.Unlock(rctx)
}

// FromContext returns the Mutex that holds the lock, from the context that
// WithLock passes to fn.
func FromContext(ctx context.Context) (*Mutex, bool) {
	if ctx == nil {
		return nil, false
	}
	m, ok := ctx.Value(mutexKey{}).(*Mutex)
	return m, ok
}
