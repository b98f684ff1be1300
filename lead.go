package microlock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Lead campaigns for the leadership of key and runs fn each time this node
// becomes the leader, until ctx is done. It is a loop of exclusive holds of
// the lock on key: candidates queue in arrival order, and the leader is the
// candidate whose key is the oldest, the layout of etcd's
// concurrency.Election, its v3election service and etcdctl elect, so
// microlock leaders and theirs exclude each other and see each other.
//
// One run of fn is a term:
//   - fn's context is cancelled as soon as leadership is lost, strictly
//     before etcd could let another candidate lead, with context.Cause
//     wrapping ErrLockLost, exactly as in WithLock. Inside fn, FromContext
//     returns the term's Mutex: its Token is the term number, which strictly
//     increases from one leader to the next, and IsOwner guards writes.
//   - If fn returns nil, the term ends: this node resigns and campaigns
//     again at once, behind the candidates already waiting.
//   - If fn returns an error, this node resigns and Lead returns the error.
//   - After a lost term, Lead waits for fn to return, then campaigns again,
//     pausing as the WithBackoff policy says (a fresh policy after each term
//     that ended with fn returning nil). fn's nil, or an error that matches
//     context.Canceled or ErrLockLost, is taken as its answer to the loss;
//     any other error ends Lead, wrapped together with the loss. If the
//     policy returns backoff.Stop, Lead returns the loss.
//
// A resign and the next campaign both wait for fn to return: two terms of
// one Lead never overlap. A candidate whose key or lease vanishes while it
// waits (revoked, expired, deleted by hand) stops waiting at once and enters
// the queue again, after the same pause as a lost term: it never reports
// leadership without a key (etcd issue #19597).
//
// When ctx is done Lead resigns, if it leads, and returns an error for which
// errors.Is(err, ctx.Err()) is true. Permanent etcd errors (permission
// denied, say) end Lead with the error.
//
// The options are those of New. OnEvent sees each term start (Acquired) and
// end (Released, or Lost with the reason), so a service can export whether
// it leads. With WithMaxHold, a term lasts at most that long, and a leader
// whose fn hangs cannot keep the leadership. Bad arguments and options are
// reported before any I/O.
func Lead(ctx context.Context, client *clientv3.Client, key string, fn func(ctx context.Context) error, opts ...Option) error {
	if ctx == nil {
		return errNilContext
	}
	if fn == nil {
		return errors.New("microlock: nil fn")
	}
	m, err := New(client, key, opts...)
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.opts.exclusiveOnly("Lead"); err != nil {
		return err
	}
	var bo backoff.BackOff
	for {
		lost, err := m.term(ctx, fn)
		switch {
		case err != nil:
			return err
		case lost == nil:
			bo = nil // a term that ended well starts a fresh policy
			continue
		}
		if bo == nil {
			bo = m.opts.newBackoff()
		}
		pause := bo.NextBackOff()
		if pause == backoff.Stop {
			return lost
		}
		if err := sleepCtx(ctx, pause); err != nil {
			return m.wrapErr(ctx, "leading", err)
		}
	}
}

// term campaigns once and, if elected, runs fn for one term. It returns the
// loss if the candidacy or the term was lost (campaign again), or the error
// that ends Lead; both nil after a term that fn ended with nil.
func (m *Mutex) term(ctx context.Context, fn func(ctx context.Context) error) (lost, err error) {
	if err := ctx.Err(); err != nil {
		return nil, m.wrapErr(ctx, "leading", err)
	}
	if err := m.Lock(ctx); err != nil {
		if ctx.Err() == nil && errors.Is(err, ErrLockLost) {
			return err, nil // our place in the queue went: enter it again
		}
		return nil, err
	}
	h := m.last()
	fnCtx, cancel := m.fnContext(ctx, h)
	fnErr := fn(fnCtx) // a panic goes on up; Lead's deferred Close resigns
	cancel(context.Canceled)
	lost = h.lostCause()
	if lost == nil {
		// Resign, even when ctx is done. Campaigning again while a resign
		// etcd did not acknowledge is finished in the background is safe.
		_ = m.unlockAfter(ctx)
		lost = h.lostCause() // lost between fn's return and the resign
	}
	switch {
	case fnErr != nil && lost != nil && !errors.Is(fnErr, context.Canceled) && !errors.Is(fnErr, ErrLockLost):
		return nil, fmt.Errorf("%w (fn returned: %w)", lost, fnErr)
	case fnErr != nil && lost == nil && !(ctx.Err() != nil && errors.Is(fnErr, ctx.Err())):
		return nil, fnErr
	case ctx.Err() != nil:
		return nil, m.wrapErr(ctx, "leading", ctx.Err())
	}
	return lost, nil
}

// sleepCtx waits for d or until ctx is done, and returns ctx's error then.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
