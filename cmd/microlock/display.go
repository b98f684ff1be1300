//go:build unix

package main

import (
	"strconv"
	"unicode/utf8"

	"github.com/microlock/microlock"
)

// A lock's value is its holder's node ID, but anything can be written under
// a lock's prefix: huge values, binary garbage, terminal escape sequences.
// microlock prints values cut to the longest node ID the library writes,
// and quoted, so that nothing in them can upset a terminal or a parser.

// clip returns at most microlock.MaxNodeIDLen bytes of v, cut at a
// character boundary, and whether it cut anything.
func clip(v []byte) (string, bool) {
	if len(v) <= microlock.MaxNodeIDLen {
		return string(v), false
	}
	n := microlock.MaxNodeIDLen
	for i := 0; i < utf8.UTFMax && n > 0 && !utf8.RuneStart(v[n]); i++ {
		n--
	}
	return string(v[:n]), true
}

// quoted returns v clipped and Go-quoted, with its full size if it was cut.
func quoted(v []byte) string {
	s, cut := clip(v)
	q := strconv.Quote(s)
	if cut {
		q += "... (" + strconv.Itoa(len(v)) + " bytes in all)"
	}
	return q
}
