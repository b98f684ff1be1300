// Package lockmetrics turns microlock's events into the observations that
// its metrics record, for each of the places that record them: the
// Prometheus adapter (contrib/prometheus), the OpenTelemetry adapter
// (contrib/otel) and the command's /metrics (internal/promtext). One
// translation serves all three, so that a series means the same wherever it
// is read, and one dashboard fits them all.
package lockmetrics

import (
	"context"
	"errors"

	"github.com/microlock/microlock"
)

// Recorder records observations. Keys are the labels the caller's key
// function made of the lock's key.
type Recorder interface {
	// Wait: a Lock returned after seconds, with result (see Result).
	Wait(key, result string, seconds float64)
	// Hold: a hold ended after seconds; end is "released" or "lost".
	Hold(key, end string, seconds float64)
	// Loss: a hold was lost, for reason (a microlock.LossReason's String).
	Loss(key, reason string)
	// Renewal: a lease renewal came back after latency seconds, with
	// margin seconds left before the loss deadline.
	Renewal(latency, margin float64)
	// Retry: a transient etcd error was retried.
	Retry()
	// Held and Waiting move the gauges of locks held and Lock calls queued.
	Held(key string, delta int64)
	Waiting(key string, delta int64)
}

// Observe records ev in r. label maps the lock's key to its label value; it
// is called once per event that has a key.
//
// The gauges balance: a Queued event counts a waiter until its Lock ends
// (Acquired or GaveUp with a Place), an Acquired event counts a holder until
// its Released or Lost.
func Observe(r Recorder, ev microlock.Event, label func(string) string) {
	switch ev.Type {
	case microlock.Queued:
		r.Waiting(label(ev.Key), 1)
	case microlock.Acquired, microlock.GaveUp:
		key := label(ev.Key)
		r.Wait(key, Result(ev.Err), ev.Waited.Seconds())
		if ev.Type == microlock.Acquired {
			r.Held(key, 1)
		}
		if ev.Place > 0 {
			r.Waiting(key, -1)
		}
	case microlock.Released:
		key := label(ev.Key)
		r.Hold(key, "released", ev.Held.Seconds())
		r.Held(key, -1)
	case microlock.Lost:
		key := label(ev.Key)
		r.Hold(key, "lost", ev.Held.Seconds())
		r.Held(key, -1)
		r.Loss(key, ev.Reason.String())
	case microlock.Renewed:
		r.Renewal(ev.Latency.Seconds(), ev.Margin.Seconds())
	case microlock.Retrying:
		r.Retry()
	}
}

// Result names why a Lock returned err, as the wait's result: acquired
// (nil), locked (NoWait found it held), canceled (the caller's context
// ended), lost (the place in the queue was lost), closed (the Mutex was
// closed) or error (anything else: etcd refused, or a retry policy gave up).
func Result(err error) string {
	switch {
	case err == nil:
		return "acquired"
	case errors.Is(err, microlock.ErrLocked):
		return "locked"
	case errors.Is(err, microlock.ErrLockLost):
		return "lost"
	case errors.Is(err, microlock.ErrClosed):
		return "closed"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "canceled"
	default:
		return "error"
	}
}

// Bucket boundaries of the histograms, in seconds. Each call returns a new
// slice, which the caller may keep.
func WaitBuckets() []float64 {
	// From an uncontended acquisition (a millisecond) to a job that waits
	// minutes for its turn.
	return []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}
}

// HoldBuckets: from a short critical section to an hour-long job.
func HoldBuckets() []float64 {
	return []float64{.001, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 900, 3600}
}

// LatencyBuckets: a renewal's round trip.
func LatencyBuckets() []float64 {
	return []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
}

// MarginBuckets: the time left before the loss deadline, about two thirds
// of the TTL when renewals are healthy, near zero before a loss.
func MarginBuckets() []float64 {
	return []float64{.25, .5, 1, 2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 30, 60}
}
