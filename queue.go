package microlock

import (
	"context"
	"errors"
	"time"

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
// create revision, and the revision at which this was read; and, for the
// Queued event, how many keys were ahead of it.
type place struct {
	rev     int64
	pred    string
	predRev int64
	readAt  int64
	ahead   int
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
	rr := resp.Responses[0].GetResponseRange()
	kvs := rr.Kvs
	if !resp.Succeeded {
		// An earlier attempt's write landed unseen. The keys ahead are
		// not counted (the Queued event says 1): a rare path, and the
		// request stays no larger than TryLock's.
		p.rev = kvs[0].CreateRevision
		return p, false, nil
	}
	// Count is the whole prefix, read before the put: the keys ahead.
	p.ahead = int(rr.Count)
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
				h.lose(LossKeyDeleted, "its key was deleted while it waited", nil)
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
			h.lose(LossKeyDeleted, "its key was deleted while it waited", nil)
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
//
// Creating the watches and that read are each bounded by attemptTimeout: a
// member that is paused or cut off never answers, and the waiter (and every
// waiter behind it) would wait for as long as ctx lasts. A timeout is a
// transient error; the caller retries, and the retry goes to another member.
func (m *Mutex) waitDelete(ctx context.Context, h *hold, p place) (ownGone bool, err error) {
	d := attemptTimeout(h.lease.ttl)
	// The lease's anchor, with the same metadata, keeps the client's watch
	// stream open for the next wait.
	gen := h.lease.waitGen.Load()
	wctx := streamContext(ctx, watchGenKey, gen)
	h.lease.anchorWaits(m.pfx, gen)
	wctx, cancel := context.WithCancelCause(wctx)
	defer cancel(nil)
	// Armed before Watch, which itself waits for the "created" reply.
	created := time.AfterFunc(d, func() { cancel(errTimedOut) })
	defer created.Stop()
	predCh := m.client.Watch(wctx, p.pred, clientv3.WithCreatedNotify(), clientv3.WithFilterPut())
	ownCh := m.client.Watch(wctx, h.key, clientv3.WithCreatedNotify(), clientv3.WithFilterPut())
	nCreated, startRev := 0, int64(0)
	// Once the watches are in place, the queue is read again every
	// recheckEvery: a member that pauses after it created them delivers
	// nothing, and nothing else would tell.
	recheck := time.NewTimer(time.Hour)
	recheck.Stop()
	defer recheck.Stop()
	for {
		var wr clientv3.WatchResponse
		var ok, own bool
		select {
		case wr, ok = <-predCh:
		case wr, ok = <-ownCh:
			own = true
		case <-recheck.C:
			ownGone, predGone, err := m.readPlace(ctx, h, p, d)
			switch {
			case err != nil:
				return false, err
			case ownGone || predGone:
				// The watch missed it: its stream is stale. Later
				// waiters move to a new one.
				h.lease.waitGen.CompareAndSwap(gen, gen+1)
				return ownGone, nil
			}
			recheck.Reset(recheckEvery(h.lease.ttl))
			continue
		}
		if !ok {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			if errors.Is(context.Cause(wctx), errTimedOut) {
				// The etcd client runs the watches whose contexts carry
				// the same metadata on one gRPC stream, and keeps a stream
				// whose watch creation is pending as long as its member
				// does not answer: a new watch would queue behind the
				// stuck one. Later waiters move to a new stream, which the
				// balancer opens on the next member; the stuck one goes
				// when its member answers or the client is closed.
				h.lease.waitGen.CompareAndSwap(gen, gen+1)
				return false, errTimedOut
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
		if nCreated++; nCreated < 2 {
			continue
		}
		// Both watches are in place, and may now wait as long as the lock
		// is held.
		created.Stop()
		recheck.Reset(recheckEvery(h.lease.ttl))
		if startRev <= p.readAt {
			continue // nothing can have been missed
		}
		// Read what happened before the watches were in place.
		ownGone, predGone, err := m.readPlace(ctx, h, p, d)
		if err != nil || ownGone || predGone {
			return ownGone, err
		}
	}
}

// readPlace reads whether h's key and its predecessor are still there, in
// one request bounded by d.
func (m *Mutex) readPlace(ctx context.Context, h *hold, p place, d time.Duration) (ownGone, predGone bool, err error) {
	tctx, tcancel := withTimer(ctx, d)
	resp, err := m.client.Txn(tctx).Then(clientv3.OpGet(p.pred), clientv3.OpGet(h.key)).Commit()
	err = timedOut(tctx, err)
	tcancel()
	if err != nil {
		return false, false, err
	}
	ownGone = !exists(resp.Responses[1].GetResponseRange().Kvs, p.rev)
	predGone = !exists(resp.Responses[0].GetResponseRange().Kvs, p.predRev)
	return ownGone, predGone, nil
}

// recheckEvery is how often a waiter reads the queue again while its
// watches are quiet: half the TTL, at least a second.
func recheckEvery(ttl time.Duration) time.Duration { return max(ttl/2, time.Second) }

// watchGenKey is the metadata key that numbers the gRPC stream a lease's
// waits share (lease.waitGen), from 1 on; 0 sends no key.
const watchGenKey = "microlock-watch-stream"

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
