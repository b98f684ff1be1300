//go:build unix

package main

import (
	"fmt"
	"time"
)

// When run's lock is lost, the child must be gone before etcd could let
// anyone else take the lock. The library declares the hold lost at
// t0 + T·(1−0.001) − max(250ms, T/10), where t0 is when the last
// acknowledged renewal was sent and T the TTL etcd granted; etcd cannot
// expire the lease before t0 + T by a clock that runs at most 0.1% apart
// from ours. So from the loss signal, max(250ms, T/10) remain. SIGTERM goes
// out at once, SIGKILL after --grace, and signalAllowance of the margin is
// kept for waking up, sending the signals and the kernel delivering them.

// signalAllowance is the part of the margin kept for signal delivery.
const signalAllowance = 100 * time.Millisecond

// lossMargin is the time between the library's loss signal and the earliest
// moment etcd could expire a lease asked for with ttl. etcd grants whole
// seconds, at least as many as asked; a longer grant only widens the margin.
func lossMargin(ttl time.Duration) time.Duration {
	granted := (ttl + time.Second - 1) / time.Second * time.Second
	return max(250*time.Millisecond, granted/10)
}

// maxGrace is the longest --grace that fits ttl's margin.
func maxGrace(ttl time.Duration) time.Duration {
	return lossMargin(ttl) - signalAllowance
}

// checkGrace refuses a grace that does not fit ttl's margin, saying which
// TTL would fit it.
func checkGrace(grace, ttl time.Duration) error {
	limit := maxGrace(ttl)
	if grace <= limit {
		return nil
	}
	// margin(T) = T/10 once T ≥ 2.5s, so T ≥ 10·(grace + allowance).
	need := (10*(grace+signalAllowance) + time.Second - 1) / time.Second * time.Second
	return usageErrorf("run: --grace %v does not fit --ttl %v: the lock is declared lost %v before etcd could expire it, "+
		"and %v of that is kept for delivering signals, so --grace can be at most %v; "+
		"use --ttl %v or more for this grace", grace, ttl, lossMargin(ttl), signalAllowance, limit, need)
}

// graceHelp explains the limit in run's help.
func graceHelp() string {
	return fmt.Sprintf("`time` between SIGTERM and SIGKILL when the lock is lost; at most\n"+
		"%32smax(250ms, TTL/10) - %v (default: that limit, %v with --ttl 10s)", "", signalAllowance, maxGrace(10*time.Second))
}
