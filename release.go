package microlock

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

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
	resp, maybe, err := m.deleteKey(ctx, h, rev)
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
		lost := h.lose(LossKeyDeleted, "its key was gone when it was released", nil)
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

// deleteKey deletes h's key, guarded by its create revision rev, retrying
// transient failures within ctx while h lasts. maybe reports that an attempt
// failed in a way that may have deleted the key all the same (a timeout, a
// lost connection). A later attempt that finds the key gone cannot tell that
// deletion from someone else's, and must not call it a loss: the delete is
// guarded by the create revision, so it can only have removed this hold's
// key, and the lock is free either way.
func (m *Mutex) deleteKey(ctx context.Context, h *hold, rev int64) (resp *clientv3.TxnResponse, maybe bool, err error) {
	r := &retrier{m: m, what: "releasing"}
	err = r.attempts(ctx, h.lease.ttl, func(actx context.Context) (err error) {
		resp, err = m.client.Txn(actx).
			If(clientv3.Compare(clientv3.CreateRevision(h.key), "=", rev)).
			Then(clientv3.OpDelete(h.key)).
			Commit()
		return err
	}, func(err error) bool {
		maybe = maybe || keyUnknown(ctx, err) == keyMaybe
		return h.ctx.Err() == nil
	})
	return resp, maybe, err
}
