package microlock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// acquire is Lock (wait) and TryLock (!wait).
func (m *Mutex) acquire(ctx context.Context, wait bool) (err error) {
	if ctx == nil {
		return errNilContext
	}
	var start time.Time
	if m.opts.hook != nil {
		start = time.Now() // for the events' Waited
	}
	if err := m.begin(ctx, "locking"); err != nil {
		m.gaveUp(wait, start, 0, err)
		return err
	}
	defer m.end()
	m.started, m.place = start, 0
	defer func() { m.gaveUp(wait, start, m.place, err) }() // before end
	if h := m.current(); h != nil {
		return &AlreadyLockedError{Key: m.key, Holder: m.opts.nodeID, Token: h.rev.Load(),
			note: "this Mutex holds it (locks are not reentrant)"}
	}
	if last := m.last(); last != nil {
		last.finish() // a lost hold's goroutine and lease reference
	}
	if err := ctx.Err(); err != nil {
		// No request on a context that is done: the etcd client would
		// only log its own cancellation.
		return m.wrapErr(ctx, "locking", err)
	}
	// Close cancels this context, with ErrClosed as its cause, wherever the
	// operation is: granting a lease, queued, or between retries.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if !m.onClose(cancel) {
		return ErrClosed
	}
	switch {
	case !wait:
		return m.tryOnce(ctx)
	case m.opts.noWait:
		return m.tryRetrying(ctx)
	default:
		return m.lock(ctx)
	}
}

// gaveUp reports a Lock that returns err without the lock, if err is set.
func (m *Mutex) gaveUp(wait bool, start time.Time, place int, err error) {
	if hook := m.opts.hook; hook != nil && wait && err != nil {
		hook(Event{Type: GaveUp, Key: m.key, Holder: m.opts.nodeID, Err: err,
			Waited: time.Since(start), Place: place})
	}
}

// since is time.Since(t), or 0 for the zero t that a Mutex without a hook
// records.
func since(t time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	return time.Since(t)
}

// tryRetrying is Lock with NoWait: TryLock, with transient errors retried
// by the backoff policy.
func (m *Mutex) tryRetrying(ctx context.Context) error {
	r := &retrier{m: m}
	for {
		err := m.tryOnce(ctx)
		if err == nil || errors.Is(err, ErrLocked) || !r.retry(ctx, err) {
			return err
		}
	}
}

// lock is Lock: take a place in the queue with one Txn that also reads the
// predecessor, then wait for the predecessors' keys to go. Transient errors
// are retried in place, with the same key, so that a write that landed
// unseen is found again rather than left behind.
func (m *Mutex) lock(ctx context.Context) error {
	r := &retrier{m: m}
	for {
		a, err := m.newAttempt(ctx)
		if err != nil {
			if r.retry(ctx, err) {
				continue
			}
			return m.wrapErr(ctx, "locking", err)
		}
		r.reset()
		err = m.queue(a.ctx, a.h, r)
		a.stop()
		if !errors.Is(err, errStaleLease) {
			return err
		}
	}
}

// errStaleLease says the attempt's lease was unknown to etcd: the attempt
// was abandoned and a new one, on a new lease, should follow.
var errStaleLease = errors.New("microlock: stale lease")

// queue runs one Lock attempt on h.
func (m *Mutex) queue(ctx context.Context, h *hold, r *retrier) error {
	var p place
	for {
		var first bool
		var err error
		p, first, err = m.enqueue(ctx, h)
		if errors.Is(err, ErrMismatch) {
			state := keyAbsent
			if p.rev != 0 { // our key was written, with a permit ahead
				state = keyPresent
			}
			m.abandon(h, state)
			return err
		}
		if err == nil {
			if first {
				return m.held(ctx, h, p.rev)
			}
			r.reset()
			if m.place == 0 { // once per Lock, whatever its attempts
				m.place = max(p.ahead, 1)
				h.emit(Event{Type: Queued, Place: m.place})
			}
			break
		}
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			h.lease.gone()
			m.abandon(h, keyAbsent)
			return errStaleLease
		}
		if keyUnknown(ctx, err) == keyMaybe {
			h.uncertain.Store(true)
		}
		if h.ctx.Err() == nil && r.retry(ctx, err) {
			continue
		}
		werr := m.wrapErr(ctx, "locking", err)
		m.abandon(h, keyUnknown(ctx, err))
		return werr
	}
	for {
		err := m.waitTurn(ctx, h, p, r.reset)
		if err == nil {
			return m.held(ctx, h, p.rev)
		}
		if errors.Is(err, ErrMismatch) {
			m.abandon(h, keyPresent)
			return err
		}
		if h.ctx.Err() == nil && r.retry(ctx, err) {
			p.wait = nil // look again
			continue
		}
		werr := m.wrapErr(ctx, "waiting for", err)
		m.abandon(h, keyPresent)
		return werr
	}
}

// attempt is one try at taking the lock: a hold on a live lease, and a
// context that ends when the caller's ends, when the hold does (its lease
// lost), or when the Mutex is closed, with the reason as its cause.
type attempt struct {
	h      *hold
	ctx    context.Context
	cancel context.CancelCauseFunc
	link   int // of cancel to h
}

// stop ends the attempt's context; the hold goes on if it was taken.
func (a *attempt) stop() {
	a.h.unlink(a.link)
	a.cancel(nil)
}

// newAttempt starts an attempt on the lease of the last one if it is still
// good for a new hold, or else on the client's shared lease.
func (m *Mutex) newAttempt(ctx context.Context) (attempt, error) {
	for {
		l := m.lease
		if l == nil || !l.ref() {
			var err error
			if l, err = m.newLease(ctx); err != nil {
				return attempt{}, err
			}
			m.lease = l
		}
		h, err := newHold(m, l)
		if err != nil {
			l.unref() // the lease ended in between: take another
			continue
		}
		a := attempt{h: h}
		a.ctx, a.cancel = context.WithCancelCause(ctx)
		a.link = h.link(a.cancel)
		return a, nil
	}
}

// tryOnce is TryLock: one Txn that puts our key only if nothing is under the
// prefix, and otherwise reads the holder. If etcd no longer knows the
// client's lease, it tries once more on a new one.
func (m *Mutex) tryOnce(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		err := m.tryLease(ctx)
		if !errors.Is(err, errStaleLease) {
			return err
		}
		if attempt == 2 {
			return fmt.Errorf("microlock: locking %s: %w", quoteKey(m.key), rpctypes.ErrLeaseNotFound)
		}
	}
}

func (m *Mutex) tryLease(ctx context.Context) error {
	a, err := m.newAttempt(ctx)
	if err != nil {
		return m.wrapErr(ctx, "locking", err)
	}
	defer a.stop()
	h, actx := a.h, a.ctx
	// A member that is paused or cut off would hold the request for the
	// whole of ctx: the attempt times out instead, with a transient error
	// whose retry (the caller's) goes to another member.
	tctx, cancel := withTimer(actx, attemptTimeout(h.lease.ttl))
	t := m.adm.tryTxn(m.pfx, clientv3.OpPut(h.key, m.opts.nodeID, clientv3.WithLease(h.lease.id)))
	resp, err := m.client.Txn(tctx).If(t.cmps...).Then(t.then...).Else(t.els...).Commit()
	err = timedOut(tctx, err)
	cancel()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		h.lease.gone()
		m.abandon(h, keyAbsent)
		return errStaleLease
	}
	if err != nil {
		werr := m.wrapErr(actx, "locking", err)
		m.abandon(h, keyUnknown(actx, err))
		return werr
	}
	if !resp.Succeeded {
		m.abandon(h, keyAbsent)
		return m.refused(rangeKvs(resp.Responses), t.foreign)
	}
	if t.reads > 0 {
		// A permit: our key is in, and counts as admitted only if fewer
		// than limit keys, all permits, were there before it.
		reads := rangeKvs(resp.Responses[:t.reads])
		if held, _, _ := m.admit(reads); !held {
			m.abandon(h, keyPresent)
			return m.refused(reads, false)
		}
	}
	return m.held(actx, h, resp.Header.Revision)
}

// held makes h the current hold: the lock is ours with token rev.
func (m *Mutex) held(ctx context.Context, h *hold, rev int64) error {
	h.rev.Store(rev)
	if m.opts.hook != nil {
		h.mu.Lock()
		h.heldAt = time.Now() // for the final event's Held
		h.mu.Unlock()
	}
	if !time.Now().Before(h.lease.currentDeadline()) {
		// This process stood still (paused, stopped, starved) past the
		// loss deadline between etcd admitting this key and now: etcd may
		// have expired the lease and admitted another holder meanwhile.
		// The deadline's timer is about to say so; never report a hold
		// that is already lost.
		h.lose(LossDeadline, "the loss deadline passed before the lock was taken", nil)
	}
	if h.ctx.Err() != nil {
		// The lease was lost while the request was in flight.
		err := fmt.Errorf("microlock: locking %s: %w", quoteKey(m.key), context.Cause(h.ctx))
		m.abandon(h, keyPresent)
		return err
	}
	m.mu.Lock()
	m.h = h
	m.mu.Unlock()
	m.limitHold(h)
	h.watchLater()
	h.emit(Event{Type: Acquired, Waited: since(m.started), Place: m.place})
	return nil
}
