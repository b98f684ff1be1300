package microlock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// transient reports whether err is worth retrying: the cluster may answer
// differently in a moment (no leader, leader changed, unreachable endpoint,
// server overloaded, an attempt that timed out). Permission, validation and
// size errors are permanent and returned at once. The caller's own context
// errors are handled by the caller before asking.
func transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true // an attempt's own timeout; the caller checked its ctx first
	}
	if errors.Is(err, context.Canceled) {
		return false
	}
	var code codes.Code
	var msg string
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code, msg = ee.Code(), ee.Error()
	} else if s, ok := status.FromError(err); ok {
		code, msg = s.Code(), s.Message()
	} else {
		return false
	}
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.Unknown, codes.Internal:
		return true
	case codes.ResourceExhausted:
		// "too many requests" passes; a message over gRPC's size limit never will.
		return !strings.Contains(msg, "larger than max")
	}
	return false
}

// retrier retries transient errors with the Mutex's backoff policy. A fresh
// policy starts each retry sequence: reset is called after every step that
// succeeded.
type retrier struct {
	m    *Mutex
	what string // what is retried, for the Retrying event: "locking" if empty
	bo   backoff.BackOff
}

// retry reports a transient error as a Retrying event, sleeps as long as the
// policy says and reports true; for any other error, an ended ctx or a
// stopped policy, it reports false.
func (r *retrier) retry(ctx context.Context, err error) bool {
	if ctx.Err() != nil || !transient(err) {
		return false
	}
	if r.bo == nil {
		r.bo = r.m.opts.newBackoff()
	}
	pause := r.bo.NextBackOff()
	if pause == backoff.Stop {
		return false
	}
	if hook := r.m.opts.hook; hook != nil {
		what := r.what
		if what == "" {
			what = "locking"
		}
		hook(Event{Type: Retrying, Key: r.m.key, Holder: r.m.opts.nodeID, Err: fmt.Errorf("microlock: %s %s: %w", what, quoteKey(r.m.key), err)})
	}
	t := time.NewTimer(pause)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (r *retrier) reset() { r.bo = nil }

// attempts runs op until it succeeds or its failure is not worth a retry.
// Each attempt lasts at most attemptTimeout(ttl), whatever ctx allows: the
// client balances requests over its endpoints round-robin, so the retry goes
// to another member, and a paused or cut-off member costs an attempt rather
// than the whole of ctx. failed, if not nil, sees each failure and says
// whether a retry may follow; r's policy spaces the retries, within ctx.
func (r *retrier) attempts(ctx context.Context, ttl time.Duration, op func(context.Context) error, failed func(error) bool) error {
	for {
		actx, cancel := withTimer(ctx, attemptTimeout(ttl))
		err := timedOut(actx, op(actx))
		cancel()
		if err == nil || (failed != nil && !failed(err)) || !r.retry(ctx, err) {
			return err
		}
	}
}
