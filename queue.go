package microlock

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The wait queue. Every key under the lock's prefix is a place in the queue,
// ordered by create revision; the first holds the lock. This is the layout of
// etcd's concurrency.Mutex, its Lock RPC and etcdctl lock, so all of them
// exclude each other. Each waiter watches only the key just ahead of it (no
// thundering herd), and its own key, whose deletion means its place is gone.

// enqueue writes h's key at the end of the queue unless it is already there
// (an earlier attempt's write that landed unseen). In the same Txn, before
// the put, it reads the last key of the queue: the predecessor. It returns
// h's create revision, the predecessor's key ("" when it must be looked up),
// whether h is first, and the revision to watch from.
func (m *Mutex) enqueue(ctx context.Context, h *hold) (rev int64, pred string, first bool, from int64, err error) {
	resp, err := m.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(h.key), "=", 0)).
		Then(
			clientv3.OpGet(m.pfx, clientv3.WithLastCreate()...),
			clientv3.OpPut(h.key, m.opts.nodeID, clientv3.WithLease(h.lease.id)),
		).
		Else(clientv3.OpGet(h.key)).
		Commit()
	if err != nil {
		return 0, "", false, 0, err
	}
	from = resp.Header.Revision + 1
	if !resp.Succeeded {
		return resp.Responses[0].GetResponseRange().Kvs[0].CreateRevision, "", false, from, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return resp.Header.Revision, "", true, from, nil
	}
	return resp.Header.Revision, string(kvs[0].Key), false, from, nil
}

// waitTurn returns when h's key, created at rev, is the first in the queue.
// pred is the key ahead of it, or "" to look it up; events are watched from
// revision from. progress is called each time a predecessor goes. If h's
// key goes, h is lost and waitTurn returns why.
func (m *Mutex) waitTurn(ctx context.Context, h *hold, rev int64, pred string, from int64, progress func()) error {
	for {
		if pred == "" {
			// Our key and the one just ahead of it, in one read.
			opts := append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(rev), clientv3.WithLimit(2))
			resp, err := m.client.Get(ctx, m.pfx, opts...)
			if err != nil {
				return err
			}
			if len(resp.Kvs) == 0 || string(resp.Kvs[0].Key) != h.key {
				h.lose("its key was deleted while it waited", nil)
				return context.Cause(h.ctx)
			}
			if len(resp.Kvs) == 1 {
				return nil
			}
			pred, from = string(resp.Kvs[1].Key), resp.Header.Revision+1
		}
		ownGone, err := m.waitDelete(ctx, pred, h.key, from)
		if err != nil {
			return err
		}
		if ownGone {
			h.lose("its key was deleted while it waited", nil)
			return context.Cause(h.ctx)
		}
		progress()
		pred = ""
	}
}

// waitDelete watches pred and own from revision from until one of them is
// deleted, and reports whether it was own. A compacted revision reports
// pred's deletion, which makes the caller read the queue again.
func (m *Mutex) waitDelete(ctx context.Context, pred, own string, from int64) (ownGone bool, err error) {
	// WithRequireLeader: a member cut off from its cluster closes the watch
	// instead of keeping it silently stale.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	predCh := m.client.Watch(wctx, pred, clientv3.WithRev(from), clientv3.WithFilterPut())
	ownCh := m.client.Watch(wctx, own, clientv3.WithRev(from), clientv3.WithFilterPut())
	for {
		var wr clientv3.WatchResponse
		var ok, isOwn bool
		select {
		case wr, ok = <-predCh:
		case wr, ok = <-ownCh:
			isOwn = true
		}
		if !ok {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			return false, errWatchClosed
		}
		if err := wr.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) {
				return false, nil
			}
			return false, err
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				return isOwn, nil
			}
		}
	}
}

// errWatchClosed is transient: the watch is opened again.
var errWatchClosed = status.Error(codes.Unavailable, "microlock: watch closed")
