//go:build unix

package main

import (
	"fmt"
	"io"
	"sync"
	"time"
)

// timeline prints what the workers do, one line per step, and checks that
// no two of them are ever inside their critical sections at once.
type timeline struct {
	w  io.Writer
	t0 time.Time

	mu      sync.Mutex
	inside  int
	overlap bool
	holders []string // in the order they took the lock
	tokens  []int64
	at      []time.Time // when each took it
	entered string      // how enter says it, with the token; default: a lock's words
}

func (tl *timeline) say(who, format string, args ...any) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.sayLocked(who, format, args...)
}

func (tl *timeline) sayLocked(who, format string, args ...any) {
	fmt.Fprintf(tl.w, "  %7.3fs  %-9s %s\n", time.Since(tl.t0).Seconds(), who, fmt.Sprintf(format, args...))
}

// enter records that who holds the lock with token and starts its work.
func (tl *timeline) enter(who string, token int64) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.inside++
	if tl.inside > 1 {
		tl.overlap = true
	}
	tl.holders = append(tl.holders, who)
	tl.tokens = append(tl.tokens, token)
	tl.at = append(tl.at, time.Now())
	format := tl.entered
	if format == "" {
		format = "holds the lock, fencing token %d"
	}
	tl.sayLocked(who, format, token)
}

// leave records that who stopped working, before it releases the lock.
func (tl *timeline) leave(who, what string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.inside--
	tl.sayLocked(who, "%s", what)
}

func (tl *timeline) overlapped() bool {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.overlap
}

func (tl *timeline) since(n int) (holders []string, tokens []int64) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return append([]string(nil), tl.holders[n:]...), append([]int64(nil), tl.tokens[n:]...)
}

// enteredAt returns when the i-th holder took the lock.
func (tl *timeline) enteredAt(i int) time.Time {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.at[i]
}
