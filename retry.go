package microlock

import (
	"context"
	"errors"
	"strings"

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
