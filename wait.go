package microlock

import (
	"context"
	"errors"
	"reflect"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// waiting is a waiter's watches while it waits its turn: one on its own
// key, kept for the whole wait, and one on each key in place.wait, kept
// from one wake-up to the next while the key stays in the set. A permit
// waiter watches up to limit keys, and a release changes one of them: it
// opens one new watch, not limit new ones.
//
// The watches start at the present, not at place.readAt: etcd serves a
// watch that starts in the past from its slow path, which catches up only
// every 100 ms, and under contention the revision has always moved on by
// the time the watch is created. What happened between readAt and the new
// watches' start is read once instead, after all are in place.
//
// Creating watches and that read are each bounded by attemptTimeout: a
// member that is paused or cut off never answers, and the waiter (and every
// waiter behind it) would wait for as long as ctx lasts. A timeout is a
// transient error; the caller retries, and the retry goes to another member.
type waiting struct {
	m       *Mutex
	h       *hold
	p       place
	d       time.Duration // bounds each step that waits on a member
	gen     uint64        // the watch stream generation of the watches
	wctx    context.Context
	cancel  context.CancelCauseFunc
	own     clientv3.WatchChan
	ahead   map[string]*aheadWatch // by key
	created *time.Timer            // ends wctx if new watches are not created in time
	recheck *time.Timer
	pending int   // watches not yet created
	fresh   int64 // the latest revision at which a pending watch was created
	settle  bool  // the last pending watches were closed: all are in place
}

// aheadWatch is the watch of one key in place.wait.
type aheadWatch struct {
	key     string
	rev     int64 // the key's create revision
	ch      clientv3.WatchChan
	cancel  context.CancelFunc
	created bool // etcd said it is in place
}

// startWaiting opens the watch of h's own key.
func (m *Mutex) startWaiting(ctx context.Context, h *hold) *waiting {
	w := &waiting{m: m, h: h, d: attemptTimeout(h.lease.ttl), ahead: make(map[string]*aheadWatch)}
	// The lease's anchor, with the same metadata, keeps the client's watch
	// stream open for the next wait.
	w.gen = h.lease.waitGen.Load()
	wctx := streamContext(ctx, watchGenKey, w.gen)
	h.lease.anchorWaits(m.pfx, w.gen)
	w.wctx, w.cancel = context.WithCancelCause(wctx)
	// Armed before Watch, which itself waits for the "created" reply.
	w.created = time.AfterFunc(w.d, func() { w.cancel(errTimedOut) })
	w.pending = 1
	w.own = m.client.Watch(w.wctx, h.key, clientv3.WithCreatedNotify(), clientv3.WithFilterPut())
	// Once the watches are in place, the queue is read again every
	// recheckEvery: a member that pauses after it created them delivers
	// nothing, and nothing else would tell.
	w.recheck = time.NewTimer(time.Hour)
	w.recheck.Stop()
	return w
}

// close ends the watches.
func (w *waiting) close() {
	w.cancel(nil)
	w.created.Stop()
	w.recheck.Stop()
}

// follow makes the watched keys those of p.wait: it closes the watches of
// keys no longer there and opens watches for the new ones.
func (w *waiting) follow(p place) {
	w.p = p
	want := make(map[string]int64, len(p.wait))
	for _, k := range p.wait {
		want[k.key] = k.rev
	}
	for key, aw := range w.ahead {
		if rev, ok := want[key]; !ok || rev != aw.rev {
			aw.cancel() // what it still holds is dropped with it
			delete(w.ahead, key)
			if !aw.created {
				w.pending--
				w.settle = w.pending == 0
			}
		}
	}
	opened := false
	for _, k := range p.wait {
		if _, ok := w.ahead[k.key]; ok {
			continue
		}
		if !opened && w.pending == 0 {
			w.recheck.Stop()
			w.created.Reset(w.d)
			w.fresh = 0
		}
		opened, w.settle = true, false
		ctx, cancel := context.WithCancel(w.wctx)
		ch := w.m.client.Watch(ctx, k.key, clientv3.WithCreatedNotify(), clientv3.WithFilterPut())
		w.ahead[k.key] = &aheadWatch{key: k.key, rev: k.rev, ch: ch, cancel: cancel}
		w.pending++
	}
}

// waitDelete waits until one of the keys in place.wait or h's own key is
// deleted, and reports whether it was h's, or else which key it was ("":
// one or more, found by a read).
func (w *waiting) waitDelete(ctx context.Context) (ownGone bool, gone string, err error) {
	// The keys ahead first, then our own, then the recheck timer: the
	// index of a select case says which fired.
	cases := make([]reflect.SelectCase, 0, len(w.p.wait)+2)
	for _, k := range w.p.wait {
		cases = append(cases, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(w.ahead[k.key].ch)})
	}
	cases = append(cases,
		reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(w.own)},
		reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(w.recheck.C)})
	if w.settle {
		w.settle = false
		if done, ownGone, err := w.inPlace(ctx); done {
			return ownGone, "", err
		}
	}
	for {
		i, v, ok := reflect.Select(cases)
		if i == len(cases)-1 {
			if done, ownGone, err := w.recheckNow(ctx); done {
				return ownGone, "", err
			}
			continue
		}
		if !ok {
			return false, "", w.closed(ctx)
		}
		wr := v.Interface().(clientv3.WatchResponse)
		var aw *aheadWatch // nil for our own key's watch
		if i < len(w.p.wait) {
			aw = w.ahead[w.p.wait[i].key]
		}
		if deleted(wr) {
			if aw == nil {
				return true, "", nil
			}
			return false, aw.key, nil
		}
		if done, ownGone, err := w.response(ctx, wr, aw); done {
			return ownGone, "", err
		}
	}
}

// deleted reports whether wr, a response of a watch that filters out puts,
// says its key was deleted.
func deleted(wr clientv3.WatchResponse) bool {
	for _, ev := range wr.Events {
		if ev.Type == mvccpb.DELETE {
			return true
		}
	}
	return false
}

// response handles one watch response that reports no deletion, of aw or,
// if nil, of h's own key. It reports done when waitDelete should return
// ownGone and err.
func (w *waiting) response(ctx context.Context, wr clientv3.WatchResponse, aw *aheadWatch) (done, ownGone bool, err error) {
	if err := wr.Err(); err != nil {
		return true, false, err
	}
	if !wr.Created {
		return false, false, nil
	}
	if aw != nil {
		aw.created = true
	}
	w.fresh = max(w.fresh, wr.Header.Revision)
	if w.pending--; w.pending > 0 {
		return false, false, nil
	}
	return w.inPlace(ctx)
}

// inPlace runs once every watch is in place: they may now wait as long as
// the lock is held, and what happened before they were is read once.
func (w *waiting) inPlace(ctx context.Context) (done, ownGone bool, err error) {
	w.created.Stop()
	w.recheck.Reset(recheckEvery(w.h.lease.ttl))
	if w.fresh <= w.p.readAt {
		return false, false, nil // nothing can have been missed
	}
	// Read what happened before the new watches were in place.
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
