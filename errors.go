package microlock

import (
	"context"
	"errors"
	"fmt"
)

var (
	// ErrLocked means another holder has the lock (Microlock's
	// AlreadyLockedError). Errors returned for it are *AlreadyLockedError.
	ErrLocked = errors.New("microlock: already locked")
	// ErrNotOwner means this Mutex does not hold the lock (Microlock's
	// LockNotOwnedError).
	ErrNotOwner = errors.New("microlock: not the lock owner")
	// ErrLockLost means ownership ended without Unlock: the lease could not be
	// renewed before the local deadline, the lease was revoked or expired on
	// the server, or the lock's key was deleted.
	ErrLockLost = errors.New("microlock: lock lost")
	// ErrClosed means the Mutex was closed: Lock, TryLock, Unlock and Renew
	// return it after Close, and a Lock that Close interrupted wraps it.
	ErrClosed = errors.New("microlock: mutex closed")
)

// AlreadyLockedError reports that another holder has the lock. Key is the
// key the caller passed, Holder the holder's node ID and Token its fencing
// token. errors.Is(err, ErrLocked) is true for it.
//
// Holder alone cannot tell this process's locks apart: with the default node
// ID (hostname and pid) every Mutex of a process stores the same one.
// Compare Token with a Mutex's Token to know whether it is that Mutex's hold.
type AlreadyLockedError struct {
	Key    string
	Holder string
	Token  int64

	note string // says when the holder is the caller itself, or may be
}

// Error names the key, its holder's node ID and token, and notes when the
// holder is, or may be, the caller's own Mutex.
func (e *AlreadyLockedError) Error() string {
	s := fmt.Sprintf("microlock: %s is locked by %s (token %d)", quoteKey(e.Key), quoteKey(e.Holder), e.Token)
	if e.note != "" {
		s += ": " + e.note
	}
	return s
}

// Is makes errors.Is(err, ErrLocked) true.
func (e *AlreadyLockedError) Is(target error) bool { return target == ErrLocked }

// lostError says why a hold ended without Unlock. It matches ErrLockLost and,
// when an etcd error caused the loss, that error too.
type lostError struct {
	key    string
	code   LossReason
	reason string
	err    error
}

func (e *lostError) Error() string {
	s := fmt.Sprintf("microlock: lock on %q lost: %s", e.key, e.reason)
	if e.err != nil {
		s += ": " + e.err.Error()
	}
	return s
}

func (e *lostError) Unwrap() []error {
	if e.err == nil {
		return []error{ErrLockLost}
	}
	return []error{ErrLockLost, e.err}
}

// errReleased is the cause recorded when a hold ends by Unlock. It never
// reaches users: Err reports nil for it.
var errReleased = errors.New("microlock: released")

// wrapErr describes an error of an etcd operation. When ctx ended, the
// error matches ctx's error and its cause: a lost place in the queue
// (ErrLockLost) or Close (ErrClosed) alone, so that neither reads as the
// caller's own cancellation; a cause the caller set with
// context.WithCancelCause together with ctx.Err().
func (m *Mutex) wrapErr(ctx context.Context, what string, err error) error {
	if ctx.Err() == nil {
		return fmt.Errorf("microlock: %s %s: %w", what, quoteKey(m.key), err)
	}
	cause := context.Cause(ctx)
	if errors.Is(cause, ErrLockLost) || errors.Is(cause, ErrClosed) || errors.Is(cause, ctx.Err()) {
		return fmt.Errorf("microlock: %s %s: %w", what, quoteKey(m.key), cause)
	}
	return fmt.Errorf("microlock: %s %s: %w: %w", what, quoteKey(m.key), ctx.Err(), cause)
}

// quoteKey quotes a key or a value for a message, shortened if long.
func quoteKey(k string) string {
	const max = 64
	if len(k) > max {
		return fmt.Sprintf("%q...(%d bytes)", k[:max], len(k))
	}
	return fmt.Sprintf("%q", k)
}
