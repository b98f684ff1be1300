package microlock

import (
	"context"
	"errors"
	"slices"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The wait queue. Every key under the lock's prefix is a place in the queue,
// ordered by create revision; for an exclusive lock the first holds it. This
// is the layout of etcd's concurrency.Mutex, its Lock RPC and etcdctl lock,
// so all of them exclude each other. Each waiter watches only the keys
// whose deletion can admit it (for an exclusive lock, the key just ahead of
// it: no thundering herd; see admission.go for the other rules), and its own
// key, whose deletion means its place is gone.

// place is a waiter's view of the queue: its own key's create revision, the
// keys ahead of it whose deletion can admit it, with their create revisions
// (nil when they must be looked up), and the revision at which this was
// read. For an exclusive lock that is the key just ahead; see admit for the
// others.
//
// known are the keys ahead that the last read found, nearest first, less
// those seen to go since; wait is the limit nearest of them. A permit reads
// twice its limit: when one it waits for goes and limit of the others
// remain, it cannot hold yet by what it knows, and waits for the next of
// them without reading the queue again. What it does not know can only be
// more deletions: then one of the limit nearest it knows of is gone, and
// the read made once the new watch is in place (waiting.inPlace) finds it.
// It holds only on a read of the queue.
type place struct {
	rev    int64
	wait   []keyRev
	known  []keyRev
	readAt int64
	ahead  int // for the Queued event: how many keys were ahead
}

// setKnown sets known and wait to the keys ahead in known.
func (p *place) setKnown(known []keyRev, limit int) {
	p.known, p.wait = known, known[:min(len(known), limit)]
	if known == nil {
		p.wait = nil
	}
}

// gone is place after key went; wait is nil if the queue must be read.
func (p *place) gone(key string, limit int) {
	known := slices.DeleteFunc(slices.Clone(p.known), func(k keyRev) bool { return k.key == key })
	if key == "" || len(known) < limit {
		known = nil
	}
	p.setKnown(known, limit)
}

// enqueue writes h's key at the end of the queue unless it is already there
// (an earlier attempt's write that landed unseen). In the same Txn, before
// the put, it reads the keys ahead that can hold it back (for an exclusive
// lock, the last key of the queue: the predecessor), and, for a shared hold
// or a permit, it compares that no key of another rule is queued. It
// reports whether h holds at once. On ErrMismatch, p.rev says whether h's
// key was written.
//
// A first attempt could do without the Else (its key's name was free), but
// the Else keeps this request as large as TryLock's: a key short enough to
// lock is short enough for another node to be told who holds it.
func (m *Mutex) enqueue(ctx context.Context, h *hold) (p place, first bool, err error) {
	// A timed-out attempt is retried with the same key, which the Else
	// branch finds if the write landed.
	ctx, cancel := withTimer(ctx, attemptTimeout(h.lease.ttl))
	defer cancel()
	// The reads, then the put, in one allocation: at most two reads.
	then := m.adm.aheadReads(make([]clientv3.Op, 0, 3), m.pfx, 0)
	reads := len(then)
	then = append(then, clientv3.OpPut(h.key, m.opts.nodeID, clientv3.WithLease(h.lease.id)))
	cmps := append([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(h.key), "=", 0)}, m.adm.foreignCmps(m.pfx)...)
	resp, err := m.client.Txn(ctx).
		If(cmps...).
		Then(then...).
		Else(append([]clientv3.Op{clientv3.OpGet(h.key)}, m.adm.foreignReads(m.pfx)...)...).
		Commit()
	if err != nil {
		return place{}, false, timedOut(ctx, err)
	}
	p.readAt = resp.Header.Revision
	if !resp.Succeeded {
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			p.rev = kvs[0].CreateRevision
			return p, false, nil
		}
		for _, r := range resp.Responses[1:] {
			if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
				return place{}, false, m.mismatch(keyRule(m.pfx, kvs[0].Key))
			}
		}
		// Cannot happen: a compare failed at this revision.
		return place{}, false, errors.New("microlock: the queue changed under a Txn")
	}
	// The reads' counts, made before the put, are the keys ahead (for a
	// shared hold, those of the other rules): the place the Queued event
	// reports, at no extra request.
	for _, r := range resp.Responses[:reads] {
		p.ahead += int(r.GetResponseRange().Count)
	}
	p.rev = resp.Header.Revision
	var known []keyRev
	first, known, err = m.admit(rangeKvs(resp.Responses[:reads]))
	p.setKnown(known, m.adm.limit)
	return p, first, err
}

// rangeKvs returns the keys that each of a Txn's range reads found.
func rangeKvs(resps []*pb.ResponseOp) [][]*mvccpb.KeyValue {
	out := make([][]*mvccpb.KeyValue, len(resps))
	for i, r := range resps {
		out[i] = r.GetResponseRange().Kvs
	}
	return out
}

// waitTurn returns when h's key holds. progress is called each time a key
// it waited for goes. If h's key goes, h is lost and waitTurn returns why.
func (m *Mutex) waitTurn(ctx context.Context, h *hold, p place, progress func()) error {
	var w *waiting // the watches, kept from one wake-up to the next
	defer func() {
		if w != nil {
			w.close()
		}
	}()
	for {
		if p.wait == nil {
			held, ownGone, err := m.lookAgain(ctx, h, &p)
			switch {
			case err != nil:
				return err
			case ownGone:
				h.lose(LossKeyDeleted, "its key was deleted while it waited", nil)
				return context.Cause(h.ctx)
			case held:
				return nil
			}
		}
		if w == nil {
			w = m.startWaiting(ctx, h)
		}
		w.follow(p)
		ownGone, gone, err := w.waitDelete(ctx)
		if err != nil {
			return err
		}
		if ownGone {
			h.lose(LossKeyDeleted, "its key was deleted while it waited", nil)
			return context.Cause(h.ctx)
		}
		progress()
		p.gone(gone, m.adm.limit)
	}
}

// lookAgain reads, in one request, h's own key and the keys ahead of it
// that can hold it back, and says whether h holds; if not, it sets p.wait.
func (m *Mutex) lookAgain(ctx context.Context, h *hold, p *place) (held, ownGone bool, err error) {
	gctx, cancel := withTimer(ctx, attemptTimeout(h.lease.ttl))
	defer cancel()
	var own []*mvccpb.KeyValue
	var ahead [][]*mvccpb.KeyValue
	if m.adm.shared {
		// The keys ahead of a shared hold are in two ranges: a Txn.
		ops := m.adm.aheadReads([]clientv3.Op{clientv3.OpGet(h.key)}, m.pfx, p.rev)
		resp, err := m.client.Txn(gctx).Then(ops...).Commit()
		if err = timedOut(gctx, err); err != nil {
			return false, false, err
		}
		p.readAt = resp.Header.Revision
		all := rangeKvs(resp.Responses)
		own, ahead = all[0], all[1:]
	} else {
		// Our key and the keys just ahead of it, in one read.
		opts := append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(p.rev), clientv3.WithLimit(int64(m.adm.readAhead()+1)))
		resp, err := m.client.Get(gctx, m.pfx, opts...)
		if err = timedOut(gctx, err); err != nil {
			return false, false, err
		}
		p.readAt = resp.Header.Revision
		if len(resp.Kvs) > 0 {
			own, ahead = resp.Kvs[:1], [][]*mvccpb.KeyValue{resp.Kvs[1:]}
		}
	}
	if len(own) == 0 || string(own[0].Key) != h.key {
		return false, true, nil
	}
	var known []keyRev
	held, known, err = m.admit(ahead)
	p.setKnown(known, m.adm.limit)
	return held, false, err
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

// errWatchClosed is transient: the watch is opened again.
var errWatchClosed = status.Error(codes.Unavailable, "microlock: watch closed")
