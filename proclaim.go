package microlock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Proclaim changes the value the holder advertises, which Watch, Holder,
// AlreadyLockedError and etcd's Election.Observe and Leader report, without
// giving up the lock: a leader announcing its new address, say. As etcd's
// Election.Proclaim does, it writes the hold's own key in a Txn guarded by
// the key's create revision, so the value of a hold that has ended can never
// be written back. The fencing token does not change.
//
// It returns an error wrapping ErrNotOwner when this Mutex does not hold the
// lock (also wrapping ErrLockLost if the hold was lost, its key found gone
// here among the ways), and ErrClosed after Close. Transient etcd errors are
// retried with the WithBackoff policy while ctx and the hold last. The value
// follows the rules of WithNodeID. The node ID itself, which events of this
// Mutex report as Holder, is not changed.
func (m *Mutex) Proclaim(ctx context.Context, value string) error {
	if ctx == nil {
		return errNilContext
	}
	if err := checkValue(value); err != nil {
		return err
	}
	if m.isClosed() {
		return ErrClosed
	}
	h := m.current()
	if h == nil {
		return m.notOwner()
	}
	rev := h.rev.Load()
	if err := ctx.Err(); err != nil {
		return m.wrapErr(ctx, "proclaiming", err)
	}
	r := &retrier{m: m, what: "proclaiming"}
	var resp *clientv3.TxnResponse
	err := r.attempts(ctx, h.lease.ttl, func(actx context.Context) (err error) {
		resp, err = m.client.Txn(actx).
			If(clientv3.Compare(clientv3.CreateRevision(h.key), "=", rev)).
			Then(clientv3.OpPut(h.key, value, clientv3.WithLease(h.lease.id))).
			Commit()
		return err
	}, func(error) bool { return h.ctx.Err() == nil })
	switch {
	case err == nil && resp.Succeeded:
		return nil
	case err == nil:
		// Gone: by its lease's end, by hand, or by a concurrent Unlock,
		// whose own answer then tells.
		if !h.releasing.Load() && h.lose(LossKeyDeleted, "its key was gone when it proclaimed", nil) {
			h.gone.Store(true)
			h.lease.detach(h)
			h.emitLost()
		}
		return m.notOwner()
	case h.ctx.Err() != nil:
		return m.notOwner()
	default:
		return m.wrapErr(ctx, "proclaiming", err)
	}
}

// checkValue applies WithNodeID's rules to a proclaimed value.
func checkValue(v string) error {
	switch {
	case strings.TrimSpace(v) == "":
		return errors.New("microlock: empty value")
	case !utf8.ValidString(v):
		return errors.New("microlock: value is not valid UTF-8")
	case len(v) > MaxNodeIDLen:
		return fmt.Errorf("microlock: value is %d bytes, more than %d", len(v), MaxNodeIDLen)
	}
	return nil
}
