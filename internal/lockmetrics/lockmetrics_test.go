package lockmetrics

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/microlock/microlock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestResult(t *testing.T) {
	for err, want := range map[error]string{
		nil: "acquired", &microlock.AlreadyLockedError{}: "locked", microlock.ErrLockLost: "lost",
		microlock.ErrClosed: "closed", context.DeadlineExceeded: "canceled", errors.New("x"): "error",
		fmt.Errorf("wrapped: %w", context.Canceled): "canceled",
	} {
		if got := Result(err); got != want {
			t.Errorf("Result(%v) = %q, want %q", err, got, want)
		}
	}
}

// log is a Recorder that writes down every call.
type log []string

func (l *log) Wait(key, result string, s float64) {
	*l = append(*l, fmt.Sprint("wait ", key, " ", result, " ", s))
}
func (l *log) Hold(key, end string, s float64) {
	*l = append(*l, fmt.Sprint("hold ", key, " ", end, " ", s))
}
func (l *log) Loss(key, reason string)     { *l = append(*l, "loss "+key+" "+reason) }
func (l *log) Renewal(lat, margin float64) { *l = append(*l, fmt.Sprint("renewal ", lat, " ", margin)) }
func (l *log) Retry()                      { *l = append(*l, "retry") }
func (l *log) Held(key string, d int64)    { *l = append(*l, fmt.Sprint("held ", key, " ", d)) }
func (l *log) Waiting(key string, d int64) { *l = append(*l, fmt.Sprint("waiting ", key, " ", d)) }

// TestObserve: each event's observations, with the key label applied, and
// gauges that balance over a queued hold that is lost and a Lock that gives
// up without having queued.
func TestObserve(t *testing.T) {
	var l log
	label := func(k string) string { return "L(" + k + ")" }
	for _, ev := range []microlock.Event{
		{Type: microlock.Queued, Key: "k", Place: 2},
		{Type: microlock.Acquired, Key: "k", Place: 2, Waited: 3 * time.Second},
		{Type: microlock.Renewed, Key: "k", Latency: time.Second / 2, Margin: 4 * time.Second},
		{Type: microlock.Retrying, Key: "k"},
		{Type: microlock.Lost, Key: "k", Held: 5 * time.Second, Reason: microlock.LossKeyDeleted},
		{Type: microlock.GaveUp, Key: "k", Err: microlock.ErrLocked, Waited: time.Second},
		{Type: microlock.Locked, Key: "k"}, // a Watch event: nothing to record
	} {
		Observe(&l, ev, label)
	}
	want := log{
		"waiting L(k) 1",
		"wait L(k) acquired 3", "held L(k) 1", "waiting L(k) -1",
		"renewal 0.5 4",
		"retry",
		"hold L(k) lost 5", "held L(k) -1", "loss L(k) key_deleted",
		"wait L(k) locked 1",
	}
	if !slices.Equal(l, want) {
		t.Errorf("observed\n%q\nwant\n%q", l, want)
	}
}
