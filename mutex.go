package microlock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// abandonTimeout bounds the deletion of a queued key when an acquisition
// gives up; if it fails, the key is deleted in the background.
const abandonTimeout = 2 * time.Second

// Mutex is a lock on one key in etcd, Microlock's lock object. Its methods
// are safe for concurrent use; Lock, TryLock, Unlock and Close run one at a
// time. A Mutex can hold the lock many times in succession. Its zero value
// is not usable: create it with New.
type Mutex struct {
	client *clientv3.Client
	key    string // as the caller gave it
	pfx    string // key + "/": the queue's prefix in etcd
	opts   *options

	op chan struct{} // one Lock, TryLock, Unlock or Close at a time

	hooks hookRunners // goroutines delivering events to the hook; Close waits

	lease *lease // the lease of the last attempt, tried first by the next; used under op

	mu       sync.Mutex
	h        *hold                   // the current hold, or the last one
	opCancel context.CancelCauseFunc // aborts the running operation on Close
	closed   bool
}

// New returns a Mutex for key on client. It does no I/O: the first call to
// Lock or TryLock talks to etcd. It returns an error for a nil client, an
// empty key, or an invalid option.
func New(client *clientv3.Client, key string, opts ...Option) (*Mutex, error) {
	if client == nil {
		return nil, errors.New("microlock: nil etcd client")
	}
	if key == "" {
		return nil, errors.New("microlock: empty key")
	}
	o, err := newOptions(opts)
	if err != nil {
		return nil, err
	}
	return &Mutex{
		client: client,
		key:    key,
		pfx:    key + "/",
		opts:   o,
		op:     make(chan struct{}, 1),
	}, nil
}

// Key returns the key the Mutex locks, as given to New.
func (m *Mutex) Key() string { return m.key }

// NodeID returns the ID this Mutex stores as the lock's value while it holds
// it.
func (m *Mutex) NodeID() string { return m.opts.nodeID }

// TryLock makes one attempt to take the lock, in one etcd request while the
// client's lease is live. If another holder has it, TryLock returns an
// *AlreadyLockedError with the holder's node ID and token. TryLock does not
// retry transient etcd errors; its request times out after a fraction of the
// TTL, so that an etcd member that is paused or cut off costs the caller a
// retry rather than its whole ctx (errors.Is(err, context.DeadlineExceeded)
// is then true). If this Mutex already holds the lock, it returns an
// *AlreadyLockedError naming this node.
func (m *Mutex) TryLock(ctx context.Context) error {
	return m.acquire(ctx, false)
}

// Lock takes the lock, waiting in arrival order behind earlier waiters until
// it is held or ctx is done. Each waiter watches only the one ahead of it.
// Transient etcd errors are retried with the WithBackoff policy, each retry
// reported as a Retrying event; permanent errors are returned at once. If
// ctx ends first, Lock leaves the queue, removes its key from etcd, and
// returns an error for which errors.Is(err, ctx.Err()) is true. If its place
// in the queue is lost while it waits (its lease expired or its key was
// deleted), Lock returns an error wrapping ErrLockLost. After Close, or if
// Close runs meanwhile, Lock returns an error wrapping ErrClosed. With
// NoWait, Lock makes one attempt, as TryLock does, and retries only
// transient errors.
func (m *Mutex) Lock(ctx context.Context) error {
	return m.acquire(ctx, true)
}

// Unlock releases the lock, in one etcd request. It returns an error wrapping
// ErrNotOwner if this Mutex does not hold the lock (also wrapping
// ErrLockLost if the hold was lost). A request that fails for a transient
// reason, or that an etcd member does not answer within a fraction of the
// TTL, is retried, on another member, while ctx and the hold last, with the
// WithBackoff policy. If etcd cannot be reached, the hold still ends here and
// now, Unlock returns the error, and the key is deleted in the background or
// expires with its lease.
func (m *Mutex) Unlock(ctx context.Context) error {
	if ctx == nil {
		return errNilContext
	}
	if err := m.begin(ctx, "unlocking"); err != nil {
		return err
	}
	defer m.end()
	h := m.current()
	if h == nil {
		return m.notOwner()
	}
	return m.release(ctx, h)
}

// Renew refreshes the lease of the current hold now. Renewal is automatic
// while the lock is held; Renew is for callers that want to be sure before a
// long step. It returns ErrClosed after Close, an error wrapping ErrNotOwner
// when the lock is not held, and, if etcd answers that the lease is gone, an
// error wrapping ErrLockLost: the hold (and every other hold on the same
// lease) has then ended, Done is closed and Lost is reported.
func (m *Mutex) Renew(ctx context.Context) error {
	if ctx == nil {
		return errNilContext
	}
	if m.isClosed() {
		return ErrClosed
	}
	h := m.current()
	if h == nil {
		return m.notOwner()
	}
	if err := ctx.Err(); err != nil {
		return m.wrapErr(ctx, "renewing", err)
	}
	err := h.lease.keepAliveOnce(ctx)
	switch {
	case err == nil:
		h.emit(Event{Type: Renewed})
		return nil
	case errors.Is(err, errLeaseGone):
		h.lease.gone() // every hold on the lease is lost, this one too
		if cause := h.lostCause(); cause != nil {
			return cause
		}
		return m.notOwner() // released meanwhile
	default:
		return m.wrapErr(ctx, "renewing", err)
	}
}

// Close releases the lock if this Mutex holds it, aborts a Lock that is
// waiting, and stops every goroutine and watch the Mutex started, waiting
// for them; if no other lock of the same client and TTL uses the lease, it
// is revoked now rather than kept for reuse. It returns the release error,
// if any. After Close, Lock, TryLock and Unlock return ErrClosed. Close is
// idempotent.
func (m *Mutex) Close() error {
	return m.close(true)
}

// close is Close; WithLock passes freeLease false, keeping an unused lease
// for the next call.
func (m *Mutex) close(freeLease bool) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	if m.opCancel != nil {
		m.opCancel(ErrClosed)
	}
	m.mu.Unlock()

	m.op <- struct{}{} // the running operation, if any, was just told to stop
	defer func() { <-m.op }()
	var err error
	if h := m.current(); h != nil {
		ctx, cancel := withTimer(context.Background(), ReleaseTimeout)
		err = m.release(ctx, h)
		cancel()
	}
	if last := m.last(); last != nil {
		last.finish()
		if freeLease {
			last.lease.retireIfUnused()
		}
	}
	if l := m.lease; freeLease && l != nil {
		// The lease of the last attempt, which a failed TryLock or Lock
		// leaves unused: revoked now, not kept for a next call that a
		// closed Mutex will never make.
		l.retireIfUnused()
	}
	m.hooks.close()
	return err
}

func (m *Mutex) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// Done returns a channel that is closed when the current hold ends, released
// or lost. Without a current hold it returns the last hold's channel, which
// is closed; before the first hold it returns a closed channel.
func (m *Mutex) Done() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil {
		return closedChan
	}
	return m.h.ctx.Done()
}

// Err reports why the last hold ended: nil while held, after Unlock and
// before the first hold; an error wrapping ErrLockLost after a loss.
func (m *Mutex) Err() error {
	h := m.last()
	if h == nil {
		return nil
	}
	return h.lostCause()
}

// Token returns the fencing token of the current hold, or 0 when the lock is
// not held. Tokens of successive holds of one key strictly increase (it is the
// create revision of the hold's key in etcd). Pass it to the systems the
// work writes to, and have them refuse a token lower than one they have seen.
func (m *Mutex) Token() int64 {
	if h := m.current(); h != nil {
		return h.rev.Load()
	}
	return 0
}

// IsOwner returns an etcd comparison that is true only while this hold
// lasts. Put it in the If of your own Txn and a write from a holder that has
// lost the lock cannot land, however late it arrives. Without a current hold
// it returns a comparison that is never true.
func (m *Mutex) IsOwner() clientv3.Cmp {
	if h := m.current(); h != nil {
		return clientv3.Compare(clientv3.CreateRevision(h.key), "=", h.rev.Load())
	}
	// No key has a negative create revision.
	return clientv3.Compare(clientv3.CreateRevision(m.pfx), "<", 0)
}

var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

var errNilContext = errors.New("microlock: nil context")

// last returns the current or last hold, live or not, or nil.
func (m *Mutex) last() *hold {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.h
}

// current returns the hold if it is live, or nil.
func (m *Mutex) current() *hold {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.h == nil || m.h.ctx.Err() != nil {
		return nil
	}
	return m.h
}

func (m *Mutex) notOwner() error {
	if h := m.last(); h != nil {
		if cause := h.lostCause(); cause != nil {
			return fmt.Errorf("%w: %w", ErrNotOwner, cause)
		}
	}
	return ErrNotOwner
}

// begin waits for the Mutex's other operations to finish. end ends the
// operation.
func (m *Mutex) begin(ctx context.Context, what string) error {
	select {
	case m.op <- struct{}{}:
	case <-ctx.Done():
		return m.wrapErr(ctx, what, ctx.Err())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		<-m.op
		return ErrClosed
	}
	return nil
}

func (m *Mutex) end() {
	m.mu.Lock()
	m.opCancel = nil
	m.mu.Unlock()
	<-m.op
}

// onClose registers cancel for Close to call, with ErrClosed, to abort the
// running operation. It reports false if the Mutex is closed already: Close
// sets closed and reads opCancel under mu, so either it sees cancel or this
// sees closed.
func (m *Mutex) onClose(cancel context.CancelCauseFunc) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	m.opCancel = cancel
	return true
}

// release deletes the hold's key if it still has the hold's revision.
//
// Each attempt is bounded by attemptTimeout and transient failures are
// retried, within ctx and while the hold lasts (its lease's deadline bounds
// the retries even when ctx does not): the client balances requests over its
// endpoints round-robin, so the retry goes to another member, and a paused or
// cut-off member costs a retry rather than the whole of ctx.
func (m *Mutex) release(ctx context.Context, h *hold) error {
	rev := h.rev.Load()
	h.releasing.Store(true)
	r := &retrier{m: m, what: "releasing"}
	// maybe records that an attempt failed in a way that may have deleted
	// the key all the same (a timeout, a lost connection). A later attempt
	// that finds the key gone cannot tell that deletion from someone
	// else's, and must not call it a loss: the delete is guarded by the
	// create revision, so it can only have removed this hold's key, and the
	// lock is free either way.
	maybe := false
	var resp *clientv3.TxnResponse
	var err error
	for {
		actx, cancel := withTimer(ctx, attemptTimeout(h.lease.ttl))
		resp, err = m.client.Txn(actx).
			If(clientv3.Compare(clientv3.CreateRevision(h.key), "=", rev)).
			Then(clientv3.OpDelete(h.key)).
			Commit()
		err = timedOut(actx, err)
		cancel()
		if err == nil {
			break
		}
		maybe = maybe || keyUnknown(ctx, err) == keyMaybe
		if h.ctx.Err() != nil || !r.retry(ctx, err) {
			break
		}
	}
	switch {
	case err != nil:
		// The hold ends here either way; the renewal loop keeps trying to
		// delete the key, and the lease's expiry deletes it at the latest.
		h.lease.orphan(h, rev)
		err = fmt.Errorf("microlock: releasing %s: %w", quoteKey(m.key), err)
		if h.end(errReleased) {
			h.finish()
			h.emit(Event{Type: Released, Err: err})
		}
		return err
	case !resp.Succeeded && !maybe:
		lost := h.lose("its key was gone when it was released", nil)
		h.finish()
		if lost {
			h.emitLost()
		}
		return m.notOwner()
	default: // deleted now, or by an earlier attempt
		if h.uncertain.Load() {
			h.lease.suspect(h)
			h.lease.retire()
		} else {
			h.gone.Store(true)
		}
		released := h.end(errReleased)
		h.finish()
		if released {
			h.emit(Event{Type: Released})
			return nil
		}
		return m.notOwner() // lost just before the delete landed
	}
}

// acquire is Lock (wait) and TryLock (!wait).
func (m *Mutex) acquire(ctx context.Context, wait bool) error {
	if ctx == nil {
		return errNilContext
	}
	if err := m.begin(ctx, "locking"); err != nil {
		return err
	}
	defer m.end()
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

// retrier retries transient errors with the Mutex's backoff policy. A fresh
// policy starts each retry sequence: reset is called after every step that
// succeeded.
type retrier struct {
	m    *Mutex
	what string // what is retried, for the Retrying event: "locking" if empty
	bo   backoff.BackOff
}

// retry reports a transient error as a Retrying event, sleeps as long as the
// policy says and reports true; for any other error, an ended ctx or a
// stopped policy, it reports false.
func (r *retrier) retry(ctx context.Context, err error) bool {
	if ctx.Err() != nil || !transient(err) {
		return false
	}
	if r.bo == nil {
		r.bo = r.m.opts.newBackoff()
	}
	pause := r.bo.NextBackOff()
	if pause == backoff.Stop {
		return false
	}
	if hook := r.m.opts.hook; hook != nil {
		what := r.what
		if what == "" {
			what = "locking"
		}
		hook(Event{Type: Retrying, Key: r.m.key, Holder: r.m.opts.nodeID, Err: fmt.Errorf("microlock: %s %s: %w", what, quoteKey(r.m.key), err)})
	}
	t := time.NewTimer(pause)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (r *retrier) reset() { r.bo = nil }

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
		if err == nil {
			if first {
				return m.held(ctx, h, p.rev)
			}
			r.reset()
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
		if h.ctx.Err() == nil && r.retry(ctx, err) {
			p.pred = "" // look again
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
			if l, err = leases.acquire(ctx, m.client, m.opts.ttlSeconds()); err != nil {
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
	resp, err := m.client.Txn(tctx).
		If(clientv3.Compare(clientv3.CreateRevision(m.pfx), "=", 0).WithPrefix()).
		Then(clientv3.OpPut(h.key, m.opts.nodeID, clientv3.WithLease(h.lease.id))).
		Else(clientv3.OpGet(m.pfx, clientv3.WithFirstCreate()...)).
		Commit()
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
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 { // cannot happen: the compare saw a key at this revision
			return fmt.Errorf("microlock: locking %s: the holder vanished", quoteKey(m.key))
		}
		e := &AlreadyLockedError{Key: m.key, Holder: string(kvs[0].Value), Token: kvs[0].CreateRevision}
		if e.Holder == m.opts.nodeID {
			e.note = "another lock with this Mutex's node ID, maybe in this process"
		}
		return e
	}
	return m.held(actx, h, resp.Header.Revision)
}

// held makes h the current hold: the lock is ours with token rev.
func (m *Mutex) held(ctx context.Context, h *hold, rev int64) error {
	h.rev.Store(rev)
	if h.ctx.Err() != nil {
		// The lease was lost while the request was in flight.
		err := fmt.Errorf("microlock: locking %s: %w", quoteKey(m.key), context.Cause(h.ctx))
		m.abandon(h, keyPresent)
		return err
	}
	m.mu.Lock()
	m.h = h
	m.mu.Unlock()
	h.watchLater()
	h.emit(Event{Type: Acquired})
	return nil
}

// keyState says what an abandoned attempt may have left in etcd.
type keyState int

const (
	keyAbsent  keyState = iota // nothing was written
	keyPresent                 // our key is there
	keyMaybe                   // a write's outcome is unknown
	keyRefused                 // etcd refused the write for good (permission, size)
)

// keyUnknown classifies the failure of a write: a permanent etcd error was
// not applied; anything else (a timeout, a cancel, a lost connection) may
// have been.
func keyUnknown(ctx context.Context, err error) keyState {
	if ctx.Err() == nil && !transient(err) {
		return keyRefused
	}
	return keyMaybe
}

// abandon gives up an attempt and cleans up after it. A key that is or may
// be there is deleted now, or failing that by the renewal loop. A lease
// whose keys we cannot account for is retired, so that they go with it; so is
// one refused by etcd, so that a lease granted for nothing does not linger.
func (m *Mutex) abandon(h *hold, state keyState) {
	h.end(errReleased)
	switch state {
	case keyAbsent:
		h.gone.Store(true)
	case keyRefused:
		h.gone.Store(true)
		h.lease.retire()
	case keyPresent, keyMaybe:
		if h.uncertain.Load() {
			state = keyMaybe
		}
		ctx, cancel := context.WithTimeout(context.Background(), abandonTimeout)
		_, err := m.client.Delete(ctx, h.key)
		cancel()
		switch {
		case state == keyMaybe:
			// The write may still land, after this delete: the key is
			// deleted again after every renewal, and its slot never freed.
			h.lease.suspect(h)
		case err != nil:
			h.lease.orphan(h, 0)
		default:
			h.gone.Store(true)
		}
		if err != nil || state == keyMaybe {
			h.lease.retire()
		}
	}
	h.finish()
}

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
