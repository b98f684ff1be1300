//go:build unix && race

package main

// raceEnabled builds the microlock binary under test with the race
// detector when the tests run with it.
const raceEnabled = true
