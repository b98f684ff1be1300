package bench

import (
	"math"
	"slices"
	"testing"
	"time"
)

// acquisition is one hold in a contention run: who held the lock, when its
// Lock returned and when its Unlock returned.
type acquisition struct {
	who              int
	locked, unlocked time.Time
}

// handoffStats sums up a contention run.
type handoffStats struct {
	span      time.Duration // first Lock returned → last Lock returned
	perSecond float64       // handoffs per second over span
	p50, p99  time.Duration // handoff latency
	fairness  float64       // most acquisitions of one contender / fewest
}

// handoffs computes the stats of the acquisitions acqs, in the order of the
// holds, made by contenders 0 … c−1. A handoff's latency runs from the
// previous holder's Unlock returning to the next holder's Lock returning;
// the next holder can learn of the release before the previous one has its
// answer, and such a handoff counts as zero.
func handoffs(acqs []acquisition, c int) handoffStats {
	var s handoffStats
	if len(acqs) < 2 {
		return s
	}
	lat := make([]time.Duration, 0, len(acqs)-1)
	for i := 1; i < len(acqs); i++ {
		lat = append(lat, max(0, acqs[i].locked.Sub(acqs[i-1].unlocked)))
	}
	slices.Sort(lat)
	s.p50, s.p99 = percentile(lat, 50), percentile(lat, 99)
	s.span = acqs[len(acqs)-1].locked.Sub(acqs[0].locked)
	if s.span > 0 {
		s.perSecond = float64(len(acqs)-1) / s.span.Seconds()
	}
	counts := make([]int, c)
	for _, a := range acqs {
		counts[a.who]++
	}
	lo, hi := slices.Min(counts), slices.Max(counts)
	if lo == 0 {
		s.fairness = math.Inf(1)
	} else {
		s.fairness = float64(hi) / float64(lo)
	}
	return s
}

// percentile returns the p-th percentile of sorted by the nearest-rank
// method: the smallest value with at least p% of the values at or below it.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 200; i++ {
		ds = append(ds, time.Duration(i))
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 100}, {99, 198}, {100, 200}, {0, 1}, {0.1, 1}} {
		if got := percentile(ds, tc.p); got != tc.want {
			t.Errorf("percentile(1…200, %v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := percentile(nil, 50); got != 0 {
		t.Errorf("percentile(empty) = %v, want 0", got)
	}
}

func TestHandoffs(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Three contenders; contender 2 learns of a release before the previous
	// holder has its answer (a negative latency, counted as zero).
	acqs := []acquisition{
		{who: 0, locked: at(0), unlocked: at(1)},
		{who: 1, locked: at(3), unlocked: at(4)},
		{who: 2, locked: at(4), unlocked: at(6)},
		{who: 0, locked: at(5), unlocked: at(7)},
		{who: 1, locked: at(17), unlocked: at(18)},
	}
	s := handoffs(acqs, 3)
	if s.span != 17*time.Millisecond {
		t.Errorf("span = %v, want 17ms", s.span)
	}
	if want := 4 / 0.017; math.Abs(s.perSecond-want) > 1e-9 {
		t.Errorf("perSecond = %v, want %v", s.perSecond, want)
	}
	// Latencies: 2ms, 0, 0 (−1ms), 10ms.
	if s.p50 != 0 || s.p99 != 10*time.Millisecond {
		t.Errorf("p50, p99 = %v, %v; want 0, 10ms", s.p50, s.p99)
	}
	if s.fairness != 2 {
		t.Errorf("fairness = %v, want 2 (2 acquisitions vs 1)", s.fairness)
	}
	if s := handoffs(acqs[:3], 4); !math.IsInf(s.fairness, 1) {
		t.Errorf("fairness with a contender that never acquired = %v, want +Inf", s.fairness)
	}
}
