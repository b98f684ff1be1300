package microlock

import (
	"time"
)

// The conservative local deadline. etcd cannot expire a lease before
// t0 + T, where t0 is when the request that granted or renewed it was sent
// and T is the TTL etcd granted. We declare every hold on the lease lost at
// t0 + T·(1−clockDrift) − margin(T), measured on the monotonic clock, so the
// work is told to stop before the server could let anyone else in.
const (
	clockDrift = 1e-3                   // bound on the relative clock-rate error between us and the leader
	minMargin  = 250 * time.Millisecond // at least this much before the earliest server expiry
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
	return t0.Add(time.Duration(float64(ttl)*(1-clockDrift)) - lossMargin(ttl))
}

func lossMargin(ttl time.Duration) time.Duration { return max(minMargin, ttl/10) }

// earliestExpiry is the earliest instant etcd could expire a lease whose
// loss deadline is deadline: t0 + T, by our clock.
func earliestExpiry(deadline time.Time, ttl time.Duration) time.Time {
	return deadline.Add(lossMargin(ttl) + time.Duration(float64(ttl)*clockDrift))
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
	code, reason, cause := l.expiryReasonLocked()
	l.mu.Unlock()
	holds := l.end(code, reason, cause)
	l.mu.Lock()
	l.expired = holds
	l.mu.Unlock()
	l.poke()
}

// extend moves the deadline after a renewal sent at t0 was acknowledged with
// the granted TTL ttl. It returns the renewal's round trip and how long was
// left before the deadline it replaces, for the Renewed event.
func (l *lease) extend(t0 time.Time, ttl time.Duration) renewal {
	d := lossDeadline(t0, ttl)
	now := time.Now()
	l.mu.Lock()
	if !l.cap.IsZero() && d.After(l.cap) {
		d = l.cap // WithMaxHold
	}
	r := renewal{latency: now.Sub(t0), margin: l.deadline.Sub(now)}
	if !l.ended && d.After(l.deadline) {
		l.deadline = d
		l.armLocked()
	}
	l.mu.Unlock()
	return r
}

// renewal is what a Renewed event reports of one renewal.
type renewal struct{ latency, margin time.Duration }

func (r renewal) event() Event {
	return Event{Type: Renewed, Latency: r.latency, Margin: r.margin}
}

func (l *lease) currentDeadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}
