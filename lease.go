package microlock

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const (
	// leaseLinger is how long an unused lease is kept renewed, so that a loop
	// of WithLock calls shares one lease instead of paying a grant and a
	// revoke per call.
	leaseLinger = 10 * time.Second
	// revokeTimeout bounds the revoke of an unused lease; if it fails the
	// lease expires on its own within its TTL.
	revokeTimeout = 2 * time.Second
)

// lease is one etcd lease shared by every hold of one client and TTL, with
// the goroutine that renews it and enforces its local deadline. Renewal work
// grows with the number of leases, not with the number of locks held.
type lease struct {
	sent   time.Time // when the grant was sent: renewals count from it
	key    leaseKey
	client *clientv3.Client // for the holds' keys and their watches
	etcd   leaseEtcd        // for the lease itself: the client, but in the timing tests
	id     clientv3.LeaseID
	ttl    time.Duration // granted by etcd

	mu        sync.Mutex
	deadline  time.Time // every hold on the lease is lost at this instant
	cap       time.Time // WithMaxHold: no renewal is sent, and no deadline set, past this instant
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
	renewer leaseRenewer
	anchor  waitAnchor
	// waitGen numbers the gRPC watch stream that waits on this lease share
	// (see waitDelete); it moves on when a watch's creation times out, so
	// that later waits leave a stream stuck on a paused member.
	waitGen atomic.Uint64
}

// grant asks etcd, through e, for a new lease. The local deadline counts
// from the instant before the request was sent. One attempt lasts at most
// grantTimeout: an unreachable or leaderless cluster gives a timely error to
// retry rather than a call that hangs.
func grant(ctx context.Context, k leaseKey, e leaseEtcd) (*lease, error) {
	ctx, cancel := context.WithTimeout(ctx, grantTimeout(k.ttl))
	defer cancel()
	t0 := time.Now()
	resp, err := e.Grant(ctx, k.ttl)
	if err != nil {
		return nil, err
	}
	ttl := time.Duration(resp.TTL) * time.Second
	return &lease{
		sent:     t0,
		key:      k,
		client:   k.client,
		etcd:     e,
		id:       resp.ID,
		ttl:      ttl,
		deadline: lossDeadline(t0, ttl),
		holds:    make(map[*hold]struct{}),
		orphans:  make(map[*hold]int64),
		suspects: make(map[*hold]struct{}),
		slots:    make(map[slot]struct{}),
		watch:    newKeyWatch(k.client),
		renewer:  e.renewer(),
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

var errLeaseEnded = errors.New("lease ended")

// gone ends l because etcd answered that it does not know it: it expired
// or was revoked, and every hold on it is lost. The renewal loop finds out
// on its own at its next renewal; this tells new holds at once.
func (l *lease) gone() {
	l.retire()
	emitLost(l.end(LossLeaseRevoked, "the lease expired or was revoked on the server", nil))
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

// end marks the lease ended and every hold on it lost, and returns those
// holds. It calls no hook: the caller reports the losses with emitLost, after
// every hold's context is cancelled, so that a slow hook cannot delay
// another hold's loss signal. Only the first call returns holds.
func (l *lease) end(code LossReason, reason string, err error) []*hold {
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
		h.lose(code, reason, err)
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
