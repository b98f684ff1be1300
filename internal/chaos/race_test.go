//go:build race

package chaos_test

// raceEnabled: the workers are built with the race detector too, so that a
// data race in the library on a fault path fails the run.
const raceEnabled = true
