package microlock

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/singleflight"
)

// The conservative local deadline. etcd cannot expire a lease before
// t0 + T, where t0 is when the request that granted or renewed it was sent
// and T is the TTL etcd granted. We declare every hold on the lease lost at
// t0 + T·(1−clockDrift) − margin(T), measured on the monotonic clock, so the
// work is told to stop before the server could let anyone else in.
const (
	clockDrift = 1e-3                   // bound on the relative clock-rate error between us and the leader
	minMargin  = 250 * time.Millisecond // at least this much before the earliest server expiry
	// leaseLinger is how long an unused lease is kept renewed, so that a loop
	// of WithLock calls shares one lease instead of paying a grant and a
	// revoke per call.
	leaseLinger = 10 * time.Second
	// revokeTimeout bounds the revoke of an unused lease; if it fails the
	// lease expires on its own within its TTL.
	revokeTimeout = 2 * time.Second
)

// attemptTimeout bounds one request on the lock path (a renewal, a place
// in the queue, a read while waiting), so that a member that is paused or
// cut off costs a retry on another member rather than the lease.
func attemptTimeout(ttl time.Duration) time.Duration {
	return max(ttl/6, 250*time.Millisecond)
}

// grantTimeout bounds one lease grant: the TTL asked for, at least 2 s.
func grantTimeout(ttl int64) time.Duration {
	return max(time.Duration(ttl)*time.Second, 2*time.Second)
}

// lossDeadline is the instant a hold renewed by a request sent at t0 must be
// considered lost.
func lossDeadline(t0 time.Time, ttl time.Duration) time.Time {
	margin := max(minMargin, ttl/10)
	return t0.Add(time.Duration(float64(ttl)*(1-clockDrift)) - margin)
}

// leaseKey identifies a shared lease: one per client and requested TTL.
type leaseKey struct {
	client *clientv3.Client
	ttl    int64 // requested, in seconds
}

// leaseTable holds the leases in use, per client and TTL. It is the package's
// only mutable state: WithLock takes nothing but a client, yet a loop of
// WithLock calls must not pay a lease grant and revoke per call, so leases
// must outlive the calls that use them. A lease leaves the table when it is
// lost, when its client is closed, or after leaseLinger unused.
type leaseTable struct {
	mu     sync.Mutex
	leases map[leaseKey]*lease
	// grants runs one grant per key at a time, shared by every caller that
	// asks meanwhile, apart from any one caller's context: a caller whose
	// context ends stops waiting, and the others keep waiting for the grant.
	grants singleflight.Group
}

var leases = leaseTable{leases: make(map[leaseKey]*lease)}

// acquire returns a live lease for (client, ttl) with a reference taken for
// the caller, granting one if needed.
func (t *leaseTable) acquire(ctx context.Context, client *clientv3.Client, ttl int64) (*lease, error) {
	k := leaseKey{client, ttl}
	for {
		t.mu.Lock()
		if l := t.leases[k]; l != nil {
			if l.ref() {
				t.mu.Unlock()
				return l, nil
			}
			delete(t.leases, k) // ending; its goroutine is on its way out
		}
		t.mu.Unlock()
		ch := t.grants.DoChan(fmt.Sprintf("%p/%d", client, ttl), func() (any, error) {
			return nil, t.grant(k)
		})
		select {
		case r := <-ch:
			if r.Err != nil {
				return nil, r.Err
			}
			// Granted and in the table, unused: take it. Should another
			// caller have used it up meanwhile (it can only end early),
			// the loop grants again.
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// grant grants a lease for k, starts its renewal loop and puts it in the
// table, unused: it lingers for leaseLinger unless a caller takes it. It
// runs with a context of its own, bounded by grantTimeout, on the goroutine
// of the singleflight group.
func (t *leaseTable) grant(k leaseKey) error {
	l, err := grant(context.Background(), k)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.idleSince = time.Now()
	l.mu.Unlock()
	l.start()
	if time.Until(l.currentDeadline()) < l.ttl/3 {
		// The grant came back slowly (etcd regaining quorum, say):
		// renew before the first hold relies on it.
		rctx, cancel := context.WithDeadline(context.Background(), l.currentDeadline())
		err := l.keepAliveOnce(rctx)
		cancel()
		if err != nil {
			l.retire() // unused: revoked at once
			return err
		}
	}
	t.mu.Lock()
	t.leases[k] = l
	t.mu.Unlock()
	l.poke() // unused: start counting its idle time
	return nil
}

// remove drops l from the table if it is still there.
func (t *leaseTable) remove(l *lease) {
	t.mu.Lock()
	if t.leases[l.key] == l {
		delete(t.leases, l.key)
	}
	t.mu.Unlock()
}

// lease is one etcd lease shared by every hold of one client and TTL, with
// the goroutine that renews it and enforces its local deadline. Renewal work
// grows with the number of leases, not with the number of locks held.
type lease struct {
	sent   time.Time // when the grant was sent: renewals count from it
	key    leaseKey
	client *clientv3.Client
	id     clientv3.LeaseID
	ttl    time.Duration // granted by etcd

	mu        sync.Mutex
	deadline  time.Time // every hold on the lease is lost at this instant
	refs      int       // holds and acquisitions using the lease
	idleSince time.Time // when refs last fell to zero
	idling    bool      // the loop's idle timer is running: unref need not wake it
	ended     bool
	retired   bool // takes no new holds; revoked once unused
	holds     map[*hold]struct{}
	orphans   map[*hold]int64 // holds whose key's release failed → its create revision (0: unknown)
	// suspects are abandoned attempts whose write's outcome is unknown: the
	// write may still land after the attempt gave up, even after its own
	// delete, and leave a key that nobody owns at the head of a queue. Their
	// keys are deleted after every renewal for as long as the lease lives;
	// their slots are never reused, so whatever is at such a key is theirs.
	suspects map[*hold]struct{}
	slots    map[slot]struct{} // the key slots in use
	// timer fires at the deadline. It runs apart from the renewal loop, so
	// that nothing the loop waits for (a hook, a request) can delay the loss
	// signal; it only cancels, and leaves the Lost events to the loop.
	timer   *time.Timer
	expired []*hold // holds the timer ended, for run to report

	timers sync.WaitGroup // the timer's callback, if it runs
	watch  *keyWatch      // the holds' keys, watched for deletion
	wake   chan struct{}  // refs hit zero, retired, orphans added, or expired
	done   chan struct{}  // closed when run returns

	// renewer carries the renewals, on one stream; anchor keeps the
	// client's watch stream open between waits in a queue.
	renewer *renewStream
	anchor  waitAnchor
	// waitGen numbers the gRPC watch stream that waits on this lease share
	// (see waitDelete); it moves on when a watch's creation times out, so
	// that later waits leave a stream stuck on a paused member.
	waitGen atomic.Uint64
}

// grant asks etcd for a new lease. The local deadline counts from the
// instant before the request was sent. One attempt lasts at most
// grantTimeout: an unreachable or leaderless cluster gives a timely error to
// retry rather than a call that hangs.
func grant(ctx context.Context, k leaseKey) (*lease, error) {
	ctx, cancel := context.WithTimeout(ctx, grantTimeout(k.ttl))
	defer cancel()
	t0 := time.Now()
	resp, err := k.client.Grant(ctx, k.ttl)
	if err != nil {
		return nil, err
	}
	ttl := time.Duration(resp.TTL) * time.Second
	return &lease{
		sent:     t0,
		key:      k,
		client:   k.client,
		id:       resp.ID,
		ttl:      ttl,
		deadline: lossDeadline(t0, ttl),
		holds:    make(map[*hold]struct{}),
		orphans:  make(map[*hold]int64),
		suspects: make(map[*hold]struct{}),
		slots:    make(map[slot]struct{}),
		watch:    newKeyWatch(k.client),
		renewer:  newRenewStream(k.client),
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}, nil
}

func (l *lease) start() {
	l.mu.Lock()
	l.armLocked()
	l.mu.Unlock()
	go l.run()
}

// armLocked sets the timer to the current deadline. l.mu is held.
func (l *lease) armLocked() {
	if l.timer != nil && l.timer.Stop() {
		l.timers.Done() // that callback will never run
	}
	l.timers.Add(1)
	l.timer = time.AfterFunc(time.Until(l.deadline), l.expire)
}

// expire is the timer's callback: if the deadline has really passed (a
// renewal may have moved it meanwhile), every hold on the lease is lost.
func (l *lease) expire() {
	defer l.timers.Done()
	l.mu.Lock()
	if l.ended || time.Now().Before(l.deadline) {
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	holds := l.end("no renewal was acknowledged in time", nil)
	l.mu.Lock()
	l.expired = holds
	l.mu.Unlock()
	l.poke()
}

// ref takes a reference unless the lease has ended or is about to.
func (l *lease) ref() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended || l.retired || time.Until(l.deadline) < l.ttl/3 {
		// A lease this close to its deadline is failing to renew; a fresh
		// one serves a new hold better.
		return false
	}
	l.refs++
	return true
}

func (l *lease) unref() {
	l.mu.Lock()
	wake := l.unrefLocked()
	l.mu.Unlock()
	if wake {
		l.poke()
	}
}

// unrefLocked drops a reference, and reports whether the renewal loop must
// be woken to start counting the lease's idle time. l.mu is held.
func (l *lease) unrefLocked() bool {
	l.refs--
	if l.refs != 0 {
		return false
	}
	l.idleSince = time.Now()
	// While the idle timer runs it rechecks when it fires: a loop of
	// WithLock calls must not wake the renewal goroutine every time.
	return !l.idling || l.retired
}

func (l *lease) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// attach registers h to be told when the lease ends, and gives it the lowest
// key slot of its prefix that is free on l, and so its key. It fails if the
// lease has already ended.
//
// Reusing key names matters: etcd keeps a deleted key in its index until a
// compaction, and every range read of the lock's prefix visits all of them,
// so a fresh name per hold would make a busy lock slower hold after hold.
func (l *lease) attach(h *hold) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return errLeaseEnded
	}
	s := slot{pfx: h.m.pfx}
	for {
		if _, used := l.slots[s]; !used {
			break
		}
		s.n++
	}
	l.slots[s] = struct{}{}
	h.slot = s.n
	// The slot makes the key unique among the live keys of this lease under
	// this prefix; a name is reused only once its key is known to be gone,
	// so the create revision tells holds apart.
	h.key = h.m.pfx + strconv.FormatInt(int64(l.id), 16) + "_" + strconv.Itoa(s.n)
	l.holds[h] = struct{}{}
	return nil
}

// slot is one key name of a lease under one lock prefix.
type slot struct {
	pfx string
	n   int
}

// leave undoes attach once h has ended and drops the reference h held: the
// lease takes no more notice of h, and its slot is free again if free says
// that its key is known to be gone.
func (l *lease) leave(h *hold, free bool) {
	l.mu.Lock()
	delete(l.holds, h)
	if free {
		delete(l.slots, slot{h.m.pfx, h.slot})
	}
	wake := l.unrefLocked()
	l.mu.Unlock()
	if wake {
		l.poke()
	}
}

func (l *lease) detach(h *hold) {
	l.mu.Lock()
	delete(l.holds, h)
	l.mu.Unlock()
}

var errLeaseEnded = errors.New("lease ended")

// gone ends l because etcd answered that it does not know it: it expired
// or was revoked, and every hold on it is lost. The renewal loop finds out
// on its own at its next renewal; this tells new holds at once.
func (l *lease) gone() {
	l.retire()
	emitLost(l.end("the lease expired or was revoked on the server", nil))
}

// retire stops l from taking new holds and has it revoked as soon as it is
// unused. A write on the lock path whose outcome is unknown retires its
// lease: a key it may have left behind then goes with the lease, instead of
// living as long as other holds keep the lease renewed.
func (l *lease) retire() {
	l.mu.Lock()
	l.retired = true
	l.mu.Unlock()
	leases.remove(l)
	l.poke()
}

// orphan queues h's key for deletion by the renewal loop: its release
// failed, and the lease, kept alive for other holds, would otherwise keep it
// forever. rev is its create revision, or 0 if unknown.
func (l *lease) orphan(h *hold, rev int64) {
	l.mu.Lock()
	if !l.ended {
		l.orphans[h] = rev
	}
	l.mu.Unlock()
	l.poke()
}

// freeSlot returns a slot whose key is known to be gone from etcd. A slot
// whose key's fate is unknown is never reused on this lease.
func (l *lease) freeSlot(pfx string, n int) {
	l.mu.Lock()
	delete(l.slots, slot{pfx, n})
	l.mu.Unlock()
}

// extend moves the deadline after a renewal sent at t0 was acknowledged with
// the granted TTL ttl.
func (l *lease) extend(t0 time.Time, ttl time.Duration) {
	d := lossDeadline(t0, ttl)
	l.mu.Lock()
	if !l.ended && d.After(l.deadline) {
		l.deadline = d
		l.armLocked()
	}
	l.mu.Unlock()
}

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

// retireIfUnused retires l if nothing uses it, and then waits for its
// goroutine to revoke it and stop. It reports whether it did. A lease that
// has ended already is only waited for.
func (l *lease) retireIfUnused() bool {
	l.mu.Lock()
	ended := l.ended
	unused := l.refs == 0 && !ended
	if unused {
		l.retired = true
	}
	l.mu.Unlock()
	if ended {
		<-l.done
		return false
	}
	if !unused {
		return false
	}
	leases.remove(l)
	l.poke()
	<-l.done
	return true
}

func (l *lease) currentDeadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

// orphanList returns the keys to delete after a renewal: orphans with
// their create revision (0: unknown), and suspects with -1.
func (l *lease) orphanList() map[*hold]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.orphans) == 0 && len(l.suspects) == 0 {
		return nil
	}
	out := make(map[*hold]int64, len(l.orphans)+len(l.suspects))
	for h, rev := range l.orphans {
		out[h] = rev
	}
	for h := range l.suspects {
		out[h] = -1
	}
	return out
}

// suspect has the renewal loop delete h's key after every renewal from now
// on: h's write may land late. The lease takes no new holds (the caller
// retires it), so this lasts only as long as its current holds.
func (l *lease) suspect(h *hold) {
	l.mu.Lock()
	if !l.ended {
		l.suspects[h] = struct{}{}
	}
	l.mu.Unlock()
}

// deleteOrphans deletes keys whose release failed, each guarded by its
// create revision when known, so that nothing else is ever deleted, and the
// keys of suspects, which stay suspects.
func (l *lease) deleteOrphans(ctx context.Context, orphans map[*hold]int64) {
	for h, rev := range orphans {
		var err error
		switch {
		case rev < 0:
			_, _ = l.client.Delete(ctx, h.key)
			continue
		case rev == 0:
			// The key's fate is unknown and its slot is never reused
			// meanwhile: whatever is there is ours.
			_, err = l.client.Delete(ctx, h.key)
		default:
			_, err = l.client.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(h.key), "=", rev)).
				Then(clientv3.OpDelete(h.key)).
				Commit()
		}
		if err == nil {
			l.mu.Lock()
			delete(l.orphans, h)
			l.mu.Unlock()
			l.freeSlot(h.m.pfx, h.slot)
		}
	}
}

// end marks the lease ended and every hold on it lost, and returns those
// holds. It calls no hook: the caller reports the losses with emitLost, after
// every hold's context is cancelled, so that a slow hook cannot delay
// another hold's loss signal. Only the first call returns holds.
func (l *lease) end(reason string, err error) []*hold {
	l.mu.Lock()
	if l.ended {
		l.mu.Unlock()
		return nil
	}
	l.ended = true
	holds := make([]*hold, 0, len(l.holds))
	for h := range l.holds {
		holds = append(holds, h)
	}
	clear(l.holds)
	l.mu.Unlock()
	leases.remove(l)
	for _, h := range holds {
		h.lose(reason, err)
	}
	return holds
}

// emitLost delivers the Lost events of holds that end returned, each on a
// goroutine of its own hold: the callers are goroutines that other holds
// depend on.
func emitLost(holds []*hold) {
	for _, h := range holds {
		h.emitLostAsync()
	}
}

// notify delivers a lease-wide event to the hooks of every hold on it, each
// on a goroutine of its own hold, so that a slow hook cannot hold up the
// renewal loop that every hold on the lease depends on.
func (l *lease) notify(ev Event) {
	l.mu.Lock()
	holds := make([]*hold, 0, len(l.holds))
	for h := range l.holds {
		if h.m.opts.hook != nil && h.rev.Load() != 0 {
			holds = append(holds, h)
		}
	}
	l.mu.Unlock()
	for _, h := range holds {
		h.emitAsync(ev)
	}
}
