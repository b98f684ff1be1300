//go:build unix

package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// onSignals returns a context that is cancelled, with an *interruptError as
// its cause, when the process gets SIGINT or SIGTERM. stop ends the
// watching and waits for its goroutine.
func onSignals(parent context.Context) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case s := <-sigs:
			cancel(&interruptError{sig: s})
		case <-quit:
		}
	}()
	return ctx, func() {
		close(quit)
		<-done
		signal.Stop(sigs)
		cancel(nil)
	}
}

// interrupted returns the interruptError that cancelled ctx, or nil.
func interrupted(ctx context.Context) *interruptError {
	ie, _ := context.Cause(ctx).(*interruptError)
	return ie
}
