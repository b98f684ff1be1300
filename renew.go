package microlock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// keepAliveOnce renews the lease once. Both ways etcd says that it no longer
// knows the lease, an ErrLeaseNotFound error (what the etcd client returns)
// and a TTL of zero or less, come back as errLeaseGone.
//
// It sends on the lease's one renewal stream (see renewStream), one renewal
// at a time, bounded by ctx; an error that ctx ended is returned through
// timedOut. Only a response to the request sent at t0 extends the deadline,
// to lossDeadline(t0, the TTL granted). Once the renewal loop has ended, so
// has the lease, and every hold on it: that comes back as errLeaseGone too.
//
// One attempt lasts at most attemptTimeout, whatever ctx allows: a renewal
// that hangs on a member that is paused or cut off must not keep the
// others, the loop's among them, waiting for their turn. A caller whose ctx
// allows more (Mutex.Renew, say) tries again, on a new stream, which
// usually goes to another member.
func (l *lease) keepAliveOnce(ctx context.Context) (renewal, error) {
	for {
		if l.pastCap() {
			return renewal{}, errMaxHoldReached
		}
		actx, cancel := withTimer(ctx, attemptTimeout(l.ttl))
		t0, resp, err := l.renewer.renew(actx, l.id)
		err = timedOut(actx, err)
		cancel()
		if errors.Is(err, errTimedOut) && ctx.Err() == nil {
			continue
		}
		err = timedOut(ctx, err)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) || errors.Is(err, errRenewClosed) {
			return renewal{}, errLeaseGone
		}
		if err != nil {
			return renewal{}, err
		}
		if resp.TTL <= 0 {
			return renewal{}, errLeaseGone
		}
		return l.extend(t0, time.Duration(resp.TTL)*time.Second), nil
	}
}

var errLeaseGone = errors.New("lease expired or revoked on the server")

// run renews the lease every TTL/3, retries failures until the deadline,
// deletes orphaned keys, and ends the lease on a server answer that it is
// gone, when its client closes, or when it has been unused for leaseLinger
// (at once if retired). It reports the losses the deadline timer caused. It
// is the only long-lived goroutine per lease, and it ends by itself; the
// renewal request runs in a child goroutine so that a hung request cannot
// hold the loop.
func (l *lease) run() {
	r := &renewLoop{l: l, results: make(chan renewResult, 1), lastSend: l.sent}
	defer func() {
		if r.revoke {
			l.revokeAfterLoss() // after done is closed: Close does not wait for it
		}
	}()
	defer close(l.done)
	defer l.watch.stop()
	defer l.anchor.stop()
	defer l.renewer.close() // after the last renewal the loop started
	defer l.stopTimer()
	r.ctx, r.cancel = context.WithCancel(context.Background())
	defer r.wg.Wait()
	defer r.cancel()
	// The first renewal is due TTL/3 after the grant was sent, however long
	// the grant took to come back.
	r.renew = time.NewTimer(time.Until(l.sent.Add(l.ttl / 3)))
	defer r.renew.Stop()
	r.idle = time.NewTimer(leaseLinger)
	r.idle.Stop()
	defer r.idle.Stop()

	for {
		var stop bool
		select {
		case <-l.etcd.Ctx().Done():
			emitLost(l.end(LossClientClosed, "the etcd client was closed", l.etcd.Ctx().Err()))
			return
		case <-r.renew.C:
			r.send()
		case res := <-r.results:
			stop = r.answered(res.renewal, res.err)
		case <-l.wake:
			stop = r.woken()
		case <-r.idle.C:
			stop = r.idled()
		}
		if stop {
			return
		}
	}
}

// renewLoop is the state of a lease's goroutine (run), which alone uses it.
type renewLoop struct {
	l        *lease
	ctx      context.Context // ends with the loop, and the renewal in flight with it
	cancel   context.CancelFunc
	wg       sync.WaitGroup   // the renewal in flight
	renew    *time.Timer      // the next renewal is due
	idle     *time.Timer      // the lease may have been unused for leaseLinger
	results  chan renewResult // the answer to the renewal in flight
	inflight bool
	retry    time.Duration // the pause before the next retry of a failed renewal
	lastSend time.Time     // when the last renewal was sent
	revoke   bool          // revoke the lease once the loop ends (revokeAfterLoss)
}

// send starts a renewal unless one is in flight. One attempt must not use
// up the whole deadline: a member that is paused or cut off would hold it,
// while a retry goes to another member. WithRequireLeader makes a member
// without a leader answer at once.
func (r *renewLoop) send() {
	l := r.l
	if r.inflight || l.pastCap() {
		return
	}
	r.inflight = true
	r.lastSend = time.Now()
	rctx, rcancel := context.WithDeadline(clientv3.WithRequireLeader(r.ctx), l.currentDeadline())
	rctx, rcancel2 := context.WithTimeout(rctx, attemptTimeout(l.ttl))
	orphans := l.orphanList()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer rcancel()
		defer rcancel2()
		rn, err := l.keepAliveOnce(rctx)
		if err == nil && len(orphans) > 0 {
			l.deleteOrphans(rctx, orphans)
		}
		r.results <- renewResult{rn, err}
	}()
}

type renewResult struct {
	renewal renewal
	err     error
}

// answered handles the outcome of a renewal, and reports whether the loop
// must end.
func (r *renewLoop) answered(rn renewal, err error) bool {
	l := r.l
	r.inflight = false
	switch {
	case err == nil:
		r.retry = 0
		l.notify(rn.event())
		r.renew.Reset(time.Until(r.lastSend.Add(l.ttl / 3)))
	case errors.Is(err, errLeaseGone):
		emitLost(l.end(LossLeaseRevoked, "the lease expired or was revoked on the server", nil))
		return true
	case transient(err):
		l.notify(Event{Type: Retrying, Err: fmt.Errorf("microlock: renewing lease %x: %w", int64(l.id), err)})
		r.retry = min(max(2*r.retry, 100*time.Millisecond), max(l.ttl/6, 100*time.Millisecond))
		r.renew.Reset(r.retry)
	default:
		emitLost(l.end(LossRenewFailed, "renewing the lease failed", err))
		r.revoke = true
		return true
	}
	return false
}

// woken handles a poke: the lease ended (its deadline passed), or its last
// reference went, or it was retired. It reports whether the loop must end.
func (r *renewLoop) woken() bool {
	l := r.l
	l.mu.Lock()
	ended, expired := l.ended, l.expired
	l.expired = nil
	unused, retired, since, idling := l.refs == 0, l.retired, l.idleSince, l.idling
	l.mu.Unlock()
	switch {
	case ended:
		emitLost(expired)
		r.revoke = expired != nil // the deadline passed, not a server answer
		return true
	case unused && retired:
		return l.close(r.cancel, &r.wg)
	case unused && !idling:
		r.idle.Reset(leaseLinger - time.Since(since))
		l.setIdling(true)
	}
	return false
}

// idled handles the idle timer: it revokes the lease if it has been unused
// for leaseLinger (or is retired), and reports whether the loop must end.
func (r *renewLoop) idled() bool {
	l := r.l
	l.mu.Lock()
	refs, since, retired := l.refs, l.idleSince, l.retired
	l.idling = refs == 0 // in use: the next unref wakes us again
	l.mu.Unlock()
	if refs > 0 {
		return false
	}
	if wait := leaseLinger - time.Since(since); wait > 0 && !retired {
		r.idle.Reset(wait)
		return false
	}
	if l.close(r.cancel, &r.wg) {
		return true
	}
	l.setIdling(false) // taken meanwhile: the next unref wakes us again
	return false
}

func (l *lease) setIdling(on bool) {
	l.mu.Lock()
	l.idling = on
	l.mu.Unlock()
}

// stopTimer stops the deadline timer and waits for its callback if it runs.
func (l *lease) stopTimer() {
	l.mu.Lock()
	if l.timer.Stop() {
		l.timers.Done()
	}
	l.mu.Unlock()
	l.timers.Wait()
}

// close ends an unused lease and revokes it. It reports false, doing
// nothing, if a reference was taken meanwhile.
func (l *lease) close(cancel context.CancelFunc, wg *sync.WaitGroup) bool {
	l.mu.Lock()
	if l.refs > 0 {
		l.mu.Unlock()
		return false
	}
	l.ended = true
	l.mu.Unlock()
	leases.remove(l)
	cancel()
	wg.Wait()
	ctx, rcancel := context.WithTimeout(l.etcd.Ctx(), revokeTimeout)
	defer rcancel()
	l.revokeWithin(ctx) // on failure it expires within its TTL
	return true
}

// revokeWithin revokes l, trying again within ctx. As everywhere on the lock
// path, one attempt lasts at most attemptTimeout, and a transient failure is
// retried after a pause, which the client sends to another member: a revoke
// sent to a paused member would otherwise take all of ctx and fail, and
// leave any key that a write of unknown outcome put under l (see retire) to
// live out the TTL. The pauses grow from 100 ms to 500 ms: in an outage the
// revoke lands within 500 ms of etcd answering again. It stops when etcd
// answers, when it refuses for good (the lease is gone already, say), or
// when ctx ends (the client closed, or the caller's bound).
func (l *lease) revokeWithin(ctx context.Context) {
	pause := 100 * time.Millisecond
	for {
		actx, cancel := withTimer(ctx, attemptTimeout(l.ttl))
		_, err := l.etcd.Revoke(actx, l.id)
		err = timedOut(actx, err)
		cancel()
		if err == nil || !transient(err) || sleepCtx(ctx, pause) != nil {
			return
		}
		pause = min(2*pause, 500*time.Millisecond)
	}
}
