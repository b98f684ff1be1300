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
func (l *lease) keepAliveOnce(ctx context.Context) error {
	for {
		actx, cancel := withTimer(ctx, attemptTimeout(l.ttl))
		t0, resp, err := l.renewer.renew(actx, l.id)
		err = timedOut(actx, err)
		cancel()
		if errors.Is(err, errTimedOut) && ctx.Err() == nil {
			continue
		}
		err = timedOut(ctx, err)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) || errors.Is(err, errRenewClosed) {
			return errLeaseGone
		}
		if err != nil {
			return err
		}
		if resp.TTL <= 0 {
			return errLeaseGone
		}
		l.extend(t0, time.Duration(resp.TTL)*time.Second)
		return nil
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
	// Set when the lease's holds are lost to the deadline or a failed
	// renewal: after everything else stopped and done is closed, the
	// goroutine goes on to revoke the lease (see revokeAfterLoss).
	revoke := false
	defer func() {
		if revoke {
			l.revokeAfterLoss()
		}
	}()
	defer close(l.done)
	defer l.watch.stop()
	defer l.anchor.stop()
	defer l.renewer.close() // after the last renewal the loop started
	defer func() {
		l.mu.Lock()
		if l.timer.Stop() {
			l.timers.Done()
		}
		l.mu.Unlock()
		l.timers.Wait()
	}()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	// The first renewal is due TTL/3 after the grant was sent, however long
	// the grant took to come back.
	renew := time.NewTimer(time.Until(l.sent.Add(l.ttl / 3)))
	defer renew.Stop()
	idle := time.NewTimer(leaseLinger)
	idle.Stop()
	defer idle.Stop()
	setIdling := func(on bool) {
		l.mu.Lock()
		l.idling = on
		l.mu.Unlock()
	}

	results := make(chan error, 1)
	inflight := false
	retry := time.Duration(0)
	lastSend := l.sent

	for {
		select {
		case <-l.client.Ctx().Done():
			emitLost(l.end("the etcd client was closed", l.client.Ctx().Err()))
			return

		case <-renew.C:
			if inflight {
				continue
			}
			inflight = true
			lastSend = time.Now()
			// One attempt must not use up the whole deadline: a member that
			// is paused or cut off would hold it, while a retry goes to
			// another member. WithRequireLeader makes a member without a
			// leader answer at once.
			rctx, rcancel := context.WithDeadline(clientv3.WithRequireLeader(ctx), l.currentDeadline())
			rctx, rcancel2 := context.WithTimeout(rctx, attemptTimeout(l.ttl))
			orphans := l.orphanList()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer rcancel()
				defer rcancel2()
				err := l.keepAliveOnce(rctx)
				if err == nil && len(orphans) > 0 {
					l.deleteOrphans(rctx, orphans)
				}
				results <- err
			}()

		case err := <-results:
			inflight = false
			switch {
			case err == nil:
				retry = 0
				l.notify(Event{Type: Renewed})
				renew.Reset(time.Until(lastSend.Add(l.ttl / 3)))
			case errors.Is(err, errLeaseGone):
				emitLost(l.end("the lease expired or was revoked on the server", nil))
				return
			case transient(err):
				l.notify(Event{Type: Retrying, Err: fmt.Errorf("microlock: renewing lease %x: %w", int64(l.id), err)})
				retry = min(max(2*retry, 100*time.Millisecond), max(l.ttl/6, 100*time.Millisecond))
				renew.Reset(retry)
			default:
				emitLost(l.end("renewing the lease failed", err))
				revoke = true
				return
			}

		case <-l.wake:
			l.mu.Lock()
			ended, expired := l.ended, l.expired
			l.expired = nil
			unused, retired, since, idling := l.refs == 0, l.retired, l.idleSince, l.idling
			l.mu.Unlock()
			if ended {
				emitLost(expired)
				revoke = expired != nil // the deadline passed, not a server answer
				return
			}
			if unused && retired {
				if l.close(cancel, &wg) {
					return
				}
			} else if unused && !idling {
				idle.Reset(leaseLinger - time.Since(since))
				setIdling(true)
			}

		case <-idle.C:
			l.mu.Lock()
			refs, since, retired := l.refs, l.idleSince, l.retired
			l.idling = refs == 0 // in use: the next unref wakes us again
			l.mu.Unlock()
			if refs > 0 {
				continue
			}
			if wait := leaseLinger - time.Since(since); wait > 0 && !retired {
				idle.Reset(wait)
				continue
			}
			if l.close(cancel, &wg) {
				return
			}
			setIdling(false) // taken meanwhile: the next unref wakes us again
		}
	}
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
	ctx, rcancel := context.WithTimeout(context.Background(), revokeTimeout)
	defer rcancel()
	_, _ = l.client.Revoke(ctx, l.id) // on failure it expires within its TTL
	return true
}
