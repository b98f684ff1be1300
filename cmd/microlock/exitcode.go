//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Exit codes of microlock itself. run passes its command's status through,
// so these come from sysexits.h where one fits: commands rarely use them,
// and scripts can tell microlock's verdicts from the command's own.
const (
	exitOK          = 0
	exitFailure     = 1  // any other error: etcd refused the request, unreadable TLS files, ...
	exitUsage       = 64 // EX_USAGE: bad flags or arguments
	exitUnavailable = 69 // EX_UNAVAILABLE: etcd unreachable or timed out
	exitLocked      = 75 // EX_TEMPFAIL: someone else holds the lock; try again later
	exitLost        = 76 // the lock was lost while the command ran
	exitCannotRun   = 126
	exitNotFound    = 127

	// break's verdicts. A holder that changed between break's read and its
	// delete is a temporary failure too: a new look may find something else.
	exitHolderChanged = exitLocked
	exitNotConfirmed  = 77 // EX_NOPERM: not confirmed, by --force or on a terminal
	exitFree          = 79 // nothing to break; past sysexits.h's codes, as no code there fits
)

// exitError carries an exit code to main. A nil err prints nothing: run
// uses it to exit with its command's status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// exitCode returns the code to exit with for err.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	var ie *interruptError
	if errors.As(err, &ie) {
		return ie.code()
	}
	return exitFailure
}

func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf("microlock: "+format, args...)}
}

// etcdError gives err, which came from talking to etcd, the exit code that
// says whether etcd could not be reached in time (69) or answered with a
// refusal (1).
func etcdError(err error) error {
	code := exitFailure
	var ee rpctypes.EtcdError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code = exitUnavailable
	case errors.As(err, &ee):
		if ee.Code() == codes.Unavailable || ee.Code() == codes.DeadlineExceeded {
			code = exitUnavailable
		}
	default:
		if c := status.Code(err); c == codes.Unavailable || c == codes.DeadlineExceeded {
			code = exitUnavailable
		}
	}
	return &exitError{code: code, err: err}
}

// interruptError says that a signal ended the command; it exits with
// 128+N, as shells report a command killed by signal N.
type interruptError struct {
	sig os.Signal
}

func (e *interruptError) Error() string {
	name := e.sig.String()
	switch e.sig {
	case syscall.SIGINT:
		name = "SIGINT"
	case syscall.SIGTERM:
		name = "SIGTERM"
	}
	return "microlock: stopped by " + name
}

func (e *interruptError) code() int {
	if s, ok := e.sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return exitFailure
}
