package microlock

import (
	"fmt"
)

// MaxLimit bounds WithLimit: each waiter of a semaphore watches up to limit
// keys, and reads as many each time it looks at the queue.
const MaxLimit = 1000

// WithLimit makes the lock a counting semaphore: at most n holders of the
// key at once, admitted in arrival order. A hold (a permit) is admitted when
// fewer than n keys are ahead of it in the key's queue and all of them are
// permits; any other key ahead (etcd's concurrency.Mutex, etcdctl lock)
// excludes it, as it excludes everyone. A release wakes at most n waiters.
// With n = 1 it is an ordinary exclusive Mutex, in every respect.
//
// Every client of a semaphore's key must agree on n. Lock and TryLock
// refuse with ErrMismatch, before the hold could count, when a key of the
// queue was written with another limit, or by a Shared or exclusive lock
// (an exclusive Mutex on a semaphore's key is refused in turn). n below 1,
// above MaxLimit, or combined with Shared is rejected by New and WithLock.
//
// Token identifies the hold, and IsOwner guards etcd writes as for any
// lock, but tokens of concurrent permits are not ordered with respect to
// each other: a fence that refuses older tokens is meaningful only for an
// exclusive lock. TryLock is one request when a permit is free; when the
// semaphore is full it deletes the key it wrote, a second request.
func WithLimit(n int) Option {
	return optionFunc(func(o *options) {
		switch {
		case n < 1:
			o.errs = append(o.errs, fmt.Errorf("microlock: limit %d is below 1", n))
		case n > MaxLimit:
			o.errs = append(o.errs, fmt.Errorf("microlock: limit %d is above the maximum of %d", n, MaxLimit))
		default:
			o.limit = n
		}
	})
}

// Shared makes the lock a shared (read) hold. Shared holders hold together;
// every exclusive holder excludes them and is excluded by them: a microlock
// Mutex, etcd's concurrency.Mutex, etcdctl lock. A shared hold is admitted
// when no key ahead of it in the key's queue is exclusive, so an exclusive
// waiter that queued first blocks shared holds that come after it: writers
// are not starved by a stream of readers. A Shared lock on a key where
// permits of WithLimit are queued is refused with ErrMismatch.
//
// Token identifies the hold and IsOwner guards etcd writes, but the tokens
// of concurrent shared holders are not ordered with respect to each other:
// a fence that refuses older tokens is meaningful only for an exclusive
// lock. TryLock is one request, success or failure.
func Shared() Option {
	return optionFunc(func(o *options) { o.shared = true })
}

// exclusiveOnly refuses, for what (an API that needs one holder at a time,
// such as leader election), a Shared or WithLimit option other than
// WithLimit(1).
func (o *options) exclusiveOnly(what string) error {
	switch {
	case o.shared:
		return fmt.Errorf("microlock: %s cannot be combined with Shared: it needs one holder at a time", what)
	case o.limit > 1:
		return fmt.Errorf("microlock: %s cannot be combined with WithLimit(%d): it needs one holder at a time", what, o.limit)
	}
	return nil
}
