package microlock

import (
	"context"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The wait queue. Every key under the lock's prefix is a place in the queue,
// ordered by create revision; the first holds the lock. This is the layout of
// etcd's concurrency.Mutex, its Lock RPC and etcdctl lock, so all of them
// exclude each other. Each waiter watches only the key just ahead of it (no
// thundering herd), and its own key, whose deletion means its place is gone.

// place is a waiter's view of the queue: its own key's create revision, the
// key just ahead of it (empty when it must be looked up) with that key's
// create revision, and the revision at which this was read.
type place struct {
	rev     int64
	pred    string
	predRev int64
	readAt  int64
}

// enqueue writes h's key at the end of the queue unless it is already there
// (an earlier attempt's write that landed unseen). In the same Txn, before
// the put, it reads the last key of the queue: the predecessor. It reports
// whether h is first.
//
// A first attempt could do without the Else (its key's name was free), but
// the Else keeps this request as large as TryLock's: a key short enough to
// lock is short enough for another node to be told who holds it.
func (m *Mutex) enqueue(ctx context.Context, h *hold) (p place, first bool, err error) {
	// A timed-out attempt is retried with the same key, which the Else
	// branch finds if the write landed.
	ctx, cancel := withTimer(ctx, attemptTimeout(h.lease.ttl))
	defer cancel()
	resp, err := m.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(h.key), "=", 0)).
		Then(
			clientv3.OpGet(m.pfx, lastCreate...),
			clientv3.OpPut(h.key, m.opts.nodeID, clientv3.WithLease(h.lease.id)),
		).
		Else(clientv3.OpGet(h.key)).
		Commit()
	if err != nil {
		return place{}, false, timedOut(ctx, err)
	}
	p.readAt = resp.Header.Revision
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if !resp.Succeeded {
		p.rev = kvs[0].CreateRevision
		return p, false, nil
	}
	p.rev = resp.Header.Revision
	if len(kvs) == 0 {
		return p, true, nil
	}
	p.pred, p.predRev = string(kvs[0].Key), kvs[0].CreateRevision
	return p, false, nil
}

// waitTurn returns when h's key is the first in the queue. progress is
// called each time a predecessor goes. If h's key goes, h is lost and
// waitTurn returns why.
func (m *Mutex) waitTurn(ctx context.Context, h *hold, p place, progress func()) error {
	for {
		if p.pred == "" {
			// Our key and the one just ahead of it, in one read.
			opts := append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(p.rev), clientv3.WithLimit(2))
			gctx, cancel := withTimer(ctx, attemptTimeout(h.lease.ttl))
			resp, err := m.client.Get(gctx, m.pfx, opts...)
			err = timedOut(gctx, err)
			cancel()
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
			p.pred, p.predRev, p.readAt = string(resp.Kvs[1].Key), resp.Kvs[1].CreateRevision, resp.Header.Revision
		}
		ownGone, err := m.waitDelete(ctx, h, p)
		if err != nil {
			return err
		}
		if ownGone {
			h.lose("its key was deleted while it waited", nil)
			return context.Cause(h.ctx)
		}
		progress()
		p.pred = ""
	}
}

// waitDelete waits until p's predecessor or h's own key is deleted, and
// reports whether it was h's.
//
// The watches start at the present, not at p.readAt: etcd serves a watch
// that starts in the past from its slow path, which catches up only every
// 100 ms, and under contention the revision has always moved on by the time
// the watch is created. What happened between p.readAt and the watches'
// start is read once instead, after both are in place.
func (m *Mutex) waitDelete(ctx context.Context, h *hold, p place) (ownGone bool, err error) {
	// WithRequireLeader: a member cut off from its cluster closes the watch
	// instead of keeping it silently stale. The lease's anchor, with the same
	// metadata, keeps the client's watch stream open for the next wait.
	h.lease.anchorWaits(m.pfx)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	predCh := m.client.Watch(wctx, p.pred, clientv3.WithCreatedNotify(), clientv3.WithFilterPut())
	ownCh := m.client.Watch(wctx, h.key, clientv3.WithCreatedNotify(), clientv3.WithFilterPut())
	created, startRev := 0, int64(0)
	for {
		var wr clientv3.WatchResponse
		var ok, own bool
		select {
		case wr, ok = <-predCh:
		case wr, ok = <-ownCh:
			own = true
		}
		if !ok {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			return false, errWatchClosed
		}
		if err := wr.Err(); err != nil {
			return false, err
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				return own, nil
			}
		}
		if !wr.Created {
			continue
		}
		startRev = max(startRev, wr.Header.Revision)
		if created++; created < 2 || startRev <= p.readAt {
			continue // nothing can have been missed (yet)
		}
		// Both watches are in place: read what happened before they were.
		resp, err := m.client.Txn(ctx).Then(clientv3.OpGet(p.pred), clientv3.OpGet(h.key)).Commit()
		if err != nil {
			return false, err
		}
		if !exists(resp.Responses[1].GetResponseRange().Kvs, p.rev) {
			return true, nil
		}
		if !exists(resp.Responses[0].GetResponseRange().Kvs, p.predRev) {
			return false, nil
		}
	}
}

// exists reports whether kvs, a read of one key, found it as created at
// rev: a key of the same name created later is another place in the queue.
func exists(kvs []*mvccpb.KeyValue, rev int64) bool {
	return len(kvs) == 1 && kvs[0].CreateRevision == rev
}

// lastCreate reads the last key of a prefix by create revision. It is made
// once: its options hold no state, and a lock cycle need not build them anew.
// Never append to it.
var lastCreate = clientv3.WithLastCreate()

// errWatchClosed is transient: the watch is opened again.
var errWatchClosed = status.Error(codes.Unavailable, "microlock: watch closed")
