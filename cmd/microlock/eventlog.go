//go:build unix

package main

import (
	"fmt"
	"io"
	"sync"

	"github.com/microlock/microlock"
)

// eventLog prints the library's Retrying events on stderr without ever
// blocking the library: hooks run in its renewal goroutine, and a stalled
// stderr must not delay the loss signal. Lines that do not fit the buffer
// are dropped, and so are events that come after stop (a renewal goroutine
// may still be finishing one when the Mutex is closed).
type eventLog struct {
	mu     sync.Mutex
	lines  chan string
	closed bool
	done   chan struct{}
}

func startEventLog(w io.Writer) *eventLog {
	l := &eventLog{lines: make(chan string, 64), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for s := range l.lines {
			fmt.Fprintln(w, s)
		}
	}()
	return l
}

func (l *eventLog) hook(ev microlock.Event) {
	if ev.Type != microlock.Retrying {
		return
	}
	line := fmt.Sprintf("%v; retrying", ev.Err)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	select {
	case l.lines <- line:
	default:
	}
}

// stop flushes the lines and waits for the printer.
func (l *eventLog) stop() {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.lines)
	}
	l.mu.Unlock()
	<-l.done
}
