package chaos

import "golang.org/x/sys/unix"

// Now returns the reading of CLOCK_MONOTONIC in nanoseconds. Every process
// on the machine reads the same clock, so times recorded by different
// workers and by the nemesis can be compared; the monotonic part of Go's
// time.Time cannot, since each process counts it from its own start.
func Now() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// CLOCK_MONOTONIC exists on every system Go supports it on; a
		// failure here means the suite's times would be meaningless.
		panic("microlock: chaos: reading CLOCK_MONOTONIC: " + err.Error())
	}
	return ts.Nano()
}
