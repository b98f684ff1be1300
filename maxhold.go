package microlock

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrMaxHold is the reason a hold ended when it reached its WithMaxHold
// limit. The loss matches both ErrLockLost and ErrMaxHold.
var ErrMaxHold = errors.New("microlock: held for the WithMaxHold limit")

// errMaxHoldReached answers a renewal asked for after the WithMaxHold
// limit: the lease must not be renewed past it.
var errMaxHoldReached = fmt.Errorf("%w: not renewed any more", ErrMaxHold)

// WithMaxHold bounds how long one hold (one WithLock call, one Lock, one
// term of Lead) can last: after d, its lease is no longer renewed, and the
// hold ends as lost, its context cancelled with a cause that matches
// ErrLockLost and ErrMaxHold. The hold ends at d, or earlier if a renewal
// fails, and always before etcd could expire the lease, so that the next
// holder comes in only after the work was told to stop, with the same
// margin as any other loss. A hung holder, whose fn ignores its context,
// therefore cannot keep the lock or the leadership beyond d plus the
// lease's TTL at most; the lease is revoked as soon as etcd itself could
// have expired it.
//
// A Mutex with WithMaxHold takes a lease of its own for each hold rather
// than the lease its client's other locks share (a shared lease cannot stop
// being renewed for one of them): each hold costs a lease grant and a
// revoke more. d counts from the moment the lock is held. A d of zero or
// less is rejected.
func WithMaxHold(d time.Duration) Option {
	return optionFunc(func(o *options) {
		if d <= 0 {
			o.errs = append(o.errs, fmt.Errorf("microlock: max hold %v is not positive", d))
			return
		}
		o.maxHold = d
	})
}

// newLease returns a lease with a reference taken for a new attempt: the
// client's shared lease, or with WithMaxHold one of the attempt's own.
func (m *Mutex) newLease(ctx context.Context) (*lease, error) {
	if m.opts.maxHold <= 0 {
		return leases.acquire(ctx, m.client, m.opts.ttlSeconds())
	}
	l, err := grant(ctx, leaseKey{client: m.client, ttl: m.opts.ttlSeconds()}, leases.etcdOf(m.client))
	if err != nil {
		return nil, err
	}
	// Retired from the start: it takes no other hold, and it is revoked as
	// soon as this one is done with it. It never enters the lease table.
	l.mu.Lock()
	l.refs = 1
	l.retired = true
	l.mu.Unlock()
	l.start()
	return l, nil
}

// limitHold caps h's lease at the WithMaxHold limit, counted from now.
func (m *Mutex) limitHold(h *hold) {
	if m.opts.maxHold > 0 {
		h.lease.capAt(time.Now().Add(m.opts.maxHold))
	}
}

// capAt stops the lease's renewals at t, and moves its deadline to t if
// that is sooner: the deadline timer then ends its hold at t, and the lease
// is revoked once etcd could have expired it (revokeAfterLoss).
func (l *lease) capAt(t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return
	}
	l.cap = t
	if t.Before(l.deadline) {
		l.deadline = t
		l.armLocked()
	}
}

// pastCap reports whether the lease has reached its WithMaxHold limit.
func (l *lease) pastCap() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.cap.IsZero() && !time.Now().Before(l.cap)
}

// expiryReasonLocked says why the deadline ended the lease: its WithMaxHold
// limit, or renewals that were not acknowledged in time. l.mu is held.
func (l *lease) expiryReasonLocked() (LossReason, string, error) {
	if !l.cap.IsZero() && !l.deadline.Before(l.cap) {
		return LossMaxHold, "held too long", ErrMaxHold
	}
	return LossDeadline, "no renewal was acknowledged in time", nil
}
