package microlock

import (
	"context"
	"errors"
	"reflect"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// waitDelete waits until one of the keys in p.wait or h's own key is
// deleted, and reports whether it was h's.
//
// The watches start at the present, not at p.readAt: etcd serves a watch
// that starts in the past from its slow path, which catches up only every
// 100 ms, and under contention the revision has always moved on by the time
// the watch is created. What happened between p.readAt and the watches'
// start is read once instead, after all are in place.
//
// Creating the watches and that read are each bounded by attemptTimeout: a
// member that is paused or cut off never answers, and the waiter (and every
// waiter behind it) would wait for as long as ctx lasts. A timeout is a
// transient error; the caller retries, and the retry goes to another member.
func (m *Mutex) waitDelete(ctx context.Context, h *hold, p place) (ownGone bool, err error) {
	w := &waiting{m: m, h: h, p: p, d: attemptTimeout(h.lease.ttl)}
	// The lease's anchor, with the same metadata, keeps the client's watch
	// stream open for the next wait.
	w.gen = h.lease.waitGen.Load()
	wctx := streamContext(ctx, watchGenKey, w.gen)
	h.lease.anchorWaits(m.pfx, w.gen)
	wctx, cancel := context.WithCancelCause(wctx)
	defer cancel(nil)
	w.wctx = wctx
	// Armed before Watch, which itself waits for the "created" reply.
	w.created = time.AfterFunc(w.d, func() { cancel(errTimedOut) })
	defer w.created.Stop()
	// The keys ahead first, then our own, then the recheck timer: the
	// index of a select case says which fired.
	cases := make([]reflect.SelectCase, 0, len(p.wait)+2)
	for _, k := range p.wait {
		ch := m.client.Watch(wctx, k.key, clientv3.WithCreatedNotify(), clientv3.WithFilterPut())
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ch)})
	}
	ch := m.client.Watch(wctx, h.key, clientv3.WithCreatedNotify(), clientv3.WithFilterPut())
	cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ch)})
	// Once the watches are in place, the queue is read again every
	// recheckEvery: a member that pauses after it created them delivers
	// nothing, and nothing else would tell.
	w.recheck = time.NewTimer(time.Hour)
	w.recheck.Stop()
	defer w.recheck.Stop()
	cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(w.recheck.C)})
	for {
		i, v, ok := reflect.Select(cases)
		if i == len(cases)-1 {
			if done, ownGone, err := w.recheckNow(ctx); done {
				return ownGone, err
			}
			continue
		}
		if !ok {
			return false, w.closed(ctx)
		}
		wr := v.Interface().(clientv3.WatchResponse)
		if done, ownGone, err := w.response(ctx, wr, i == len(p.wait)); done {
			return ownGone, err
		}
	}
}

// waiting is the state of one waitDelete.
type waiting struct {
	m        *Mutex
	h        *hold
	p        place
	d        time.Duration // bounds each step that waits on a member
	gen      uint64        // the watch stream generation of the watches
	wctx     context.Context
	created  *time.Timer // ends wctx if the watches are not all created in time
	recheck  *time.Timer
	nCreated int
	startRev int64 // the latest revision at which a watch was created
}

// response handles one watch response; own says it is of h's own key. It
// reports done when waitDelete should return ownGone and err.
func (w *waiting) response(ctx context.Context, wr clientv3.WatchResponse, own bool) (done, ownGone bool, err error) {
	if err := wr.Err(); err != nil {
		return true, false, err
	}
	for _, ev := range wr.Events {
		if ev.Type == mvccpb.DELETE {
			return true, own, nil
		}
	}
	if !wr.Created {
		return false, false, nil
	}
	w.startRev = max(w.startRev, wr.Header.Revision)
	if w.nCreated++; w.nCreated < len(w.p.wait)+1 {
		return false, false, nil
	}
	// All watches are in place, and may now wait as long as the lock is
	// held.
	w.created.Stop()
	w.recheck.Reset(recheckEvery(w.h.lease.ttl))
	if w.startRev <= w.p.readAt {
		return false, false, nil // nothing can have been missed
	}
	// Read what happened before the watches were in place.
	ownGone, aheadGone, err := w.m.readPlace(ctx, w.h, w.p, w.d)
	if err != nil || ownGone || aheadGone {
		return true, ownGone, err
	}
	return false, false, nil
}

// recheckNow reads the queue when the watches have been quiet for a while.
func (w *waiting) recheckNow(ctx context.Context) (done, ownGone bool, err error) {
	ownGone, aheadGone, err := w.m.readPlace(ctx, w.h, w.p, w.d)
	switch {
	case err != nil:
		return true, false, err
	case ownGone || aheadGone:
		// The watch missed it: its stream is stale. Later waiters move
		// to a new one.
		w.h.lease.waitGen.CompareAndSwap(w.gen, w.gen+1)
		return true, ownGone, nil
	}
	w.recheck.Reset(recheckEvery(w.h.lease.ttl))
	return false, false, nil
}

// closed says why a watch channel closed.
func (w *waiting) closed(ctx context.Context) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(context.Cause(w.wctx), errTimedOut) {
		// The etcd client runs the watches whose contexts carry the same
		// metadata on one gRPC stream, and keeps a stream whose watch
		// creation is pending as long as its member does not answer: a new
		// watch would queue behind the stuck one. Later waiters move to a
		// new stream, which the balancer opens on the next member; the
		// stuck one goes when its member answers or the client is closed.
		w.h.lease.waitGen.CompareAndSwap(w.gen, w.gen+1)
		return errTimedOut
	}
	return errWatchClosed
}

// readPlace reads whether h's key and the keys it waits for are still
// there, in one request bounded by d.
func (m *Mutex) readPlace(ctx context.Context, h *hold, p place, d time.Duration) (ownGone, aheadGone bool, err error) {
	ops := make([]clientv3.Op, 0, len(p.wait)+1)
	for _, k := range p.wait {
		ops = append(ops, clientv3.OpGet(k.key))
	}
	ops = append(ops, clientv3.OpGet(h.key))
	tctx, tcancel := withTimer(ctx, d)
	resp, err := m.client.Txn(tctx).Then(ops...).Commit()
	err = timedOut(tctx, err)
	tcancel()
	if err != nil {
		return false, false, err
	}
	for i, k := range p.wait {
		aheadGone = aheadGone || !exists(resp.Responses[i].GetResponseRange().Kvs, k.rev)
	}
	ownGone = !exists(resp.Responses[len(p.wait)].GetResponseRange().Kvs, p.rev)
	return ownGone, aheadGone, nil
}
