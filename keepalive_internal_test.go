package microlock

import (
	"testing"
	"time"
)

// TestLossDeadline pins the arithmetic of the early loss signal: the hold
// ends at t0 + T·(1−0.001) − max(250ms, T/10), which leaves at least 250 ms
// (and at least a tenth of the TTL) before the earliest instant etcd could
// expire the lease, t0 + T.
func TestLossDeadline(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		ttl  time.Duration
		want time.Duration // after t0
	}{
		{2 * time.Second, 2*time.Second - 2*time.Millisecond - 250*time.Millisecond},
		{3 * time.Second, 3*time.Second - 3*time.Millisecond - 300*time.Millisecond},
		{5 * time.Second, 5*time.Second - 5*time.Millisecond - 500*time.Millisecond},
		{60 * time.Second, 60*time.Second - 60*time.Millisecond - 6*time.Second},
	} {
		got := lossDeadline(t0, tc.ttl).Sub(t0)
		if got != tc.want {
			t.Errorf("TTL %v: loss at t0+%v, want t0+%v", tc.ttl, got, tc.want)
		}
		if slack := tc.ttl - got; slack < 250*time.Millisecond || slack < tc.ttl/10 {
			t.Errorf("TTL %v: only %v before the earliest server expiry", tc.ttl, slack)
		}
		// Renewal every T/3 leaves time for retries before the deadline.
		if got <= tc.ttl/3 {
			t.Errorf("TTL %v: the deadline t0+%v comes before the first renewal", tc.ttl, got)
		}
	}
}

func TestGrantTimeout(t *testing.T) {
	if got := grantTimeout(1); got != 2*time.Second {
		t.Errorf("grantTimeout(1) = %v, want the 2 s floor", got)
	}
	if got := grantTimeout(10); got != 10*time.Second {
		t.Errorf("grantTimeout(10) = %v", got)
	}
}
