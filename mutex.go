package microlock

import (
	"context"
	"errors"
	"fmt"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Mutex is a lock on one key in etcd, Microlock's lock object. Its methods
// are safe for concurrent use; Lock, TryLock, Unlock and Close run one at a
// time. A Mutex can hold the lock many times in succession. Its zero value
// is not usable: create it with New.
type Mutex struct {
	client *clientv3.Client
	key    string // as the caller gave it
	pfx    string // key + "/": the queue's prefix in etcd
	opts   *options
	adm    admission // who may hold at once: exclusive, shared or a permit

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
		adm:    newAdmission(o),
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
// *AlreadyLockedError naming this node. For a semaphore the error names the
// oldest holder; a full semaphore costs TryLock a second request, to delete
// the key it wrote.
func (m *Mutex) TryLock(ctx context.Context) error {
	return m.acquire(ctx, false)
}

// Lock takes the lock, waiting in arrival order behind earlier waiters until
// it is held or ctx is done. Each waiter watches only the one ahead of it
// (a permit of WithLimit(n): its n nearest; a Shared hold: the nearest
// exclusive one). If the key is in use under another admission rule (see
// WithLimit), Lock returns an error wrapping ErrMismatch and leaves no key.
// Transient etcd errors are retried with the WithBackoff policy, each retry
// reported as a Retrying event; permanent errors are returned at once. If
// ctx ends first, Lock leaves the queue, removes its key from etcd, and
// returns an error for which errors.Is(err, ctx.Err()) is true. If its place
// in the queue is lost while it waits (its lease expired or its key was
// deleted), Lock returns an error wrapping ErrLockLost. After Close, or if
// Close runs meanwhile, Lock returns an error wrapping ErrClosed. With
// NoWait, Lock makes one attempt, as TryLock does, and retries only
// transient errors. Locks are not reentrant: if this Mutex already holds
// the lock, Lock returns an *AlreadyLockedError naming this Mutex at once.
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
