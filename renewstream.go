package microlock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// renewStream carries a lease's renewals: one LeaseKeepAlive stream, kept
// open from one renewal to the next, instead of the stream per renewal that
// the etcd client's KeepAliveOnce opens. Opening a stream is what costs: a
// client that logs in with a password sends an Authenticate (a bcrypt check
// and a raft write on the server) every time it opens one. The stream is
// opened on the raw connection, which carries the client's interceptors, so
// the token is attached when it opens.
//
// One renewal runs at a time, so that a response answers the request sent
// just before it and the instant that request was sent, from which the
// lease's deadline counts, is never in doubt. Any error drops the stream, and
// the next renewal opens a new one: the connection's round-robin balancer
// then normally picks another member, so a member that is paused or cut off
// costs a retry, not the lease.
type renewStream struct {
	client *clientv3.Client
	// sem holds the token of the one renewal running; its holder owns
	// stream and cancel.
	sem chan struct{}
	// base is the parent of every stream: WithRequireLeader, so that a
	// member without a leader ends the stream rather than keep it hanging.
	// close cancels it.
	base    context.Context
	closeFn context.CancelFunc

	stream pb.Lease_LeaseKeepAliveClient // nil: opened by the next renewal
	cancel context.CancelFunc            // ends stream
}

func newRenewStream(client *clientv3.Client) *renewStream {
	base, closeFn := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	return &renewStream{client: client, sem: make(chan struct{}, 1), base: base, closeFn: closeFn}
}

// close ends the stream, and with it any renewal in flight, for good. The
// lease's renewal loop calls it when it ends.
func (r *renewStream) close() { r.closeFn() }

// errRenewClosed: the lease's renewal loop has ended, and closed the stream.
var errRenewClosed = errors.New("lease renewal stream closed")

// renew renews lease id once, bounded by ctx, and returns the response and
// when its request was sent. A response that comes back is the answer to
// that request. Errors are the etcd client's: a server error as an
// rpctypes error, and ctx's error when ctx ended.
func (r *renewStream) renew(ctx context.Context, id clientv3.LeaseID) (t0 time.Time, resp *pb.LeaseKeepAliveResponse, err error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, nil, err
	}
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return time.Time{}, nil, ctx.Err()
	}
	defer func() { <-r.sem }()
	fresh := r.stream == nil
	t0, resp, err = r.exchange(ctx, id)
	if err != nil && !fresh && staleToken(err) && ctx.Err() == nil {
		// The server refused the token the stream was opened with: it
		// expired meanwhile, or users or roles changed since. The etcd
		// client would have fetched a new one; a new stream does.
		t0, resp, err = r.exchange(ctx, id)
	}
	return t0, resp, err
}

// exchange sends one request on the stream, opening it if needed, and
// receives the response. The caller holds sem.
func (r *renewStream) exchange(ctx context.Context, id clientv3.LeaseID) (t0 time.Time, resp *pb.LeaseKeepAliveResponse, err error) {
	if r.stream == nil {
		if r.base.Err() != nil {
			return time.Time{}, nil, errRenewClosed
		}
		var sctx context.Context
		sctx, r.cancel = context.WithCancel(r.base)
		// Opening waits for a connection, as the etcd client's own calls
		// do; ctx bounds it like the rest.
		stop := context.AfterFunc(ctx, r.cancel)
		r.stream, err = pb.NewLeaseClient(r.client.ActiveConnection()).LeaseKeepAlive(sctx, grpc.WaitForReady(true))
		if !stop() || err != nil {
			r.drop()
			if err == nil {
				err = status.Error(codes.Canceled, context.Canceled.Error())
			}
			return time.Time{}, nil, r.streamErr(ctx, err)
		}
	}
	// ctx, which may end by a cancel, not a deadline (see withTimer),
	// bounds the exchange: its end cuts off a Send or Recv that hangs, and
	// costs the stream.
	stop := context.AfterFunc(ctx, r.cancel)
	defer func() {
		if !stop() || err != nil {
			r.drop()
		}
	}()
	t0 = time.Now()
	err = r.stream.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)})
	if err == nil {
		resp, err = r.stream.Recv()
	} else if errors.Is(err, io.EOF) {
		// The stream has ended; Recv says why.
		if _, rerr := r.stream.Recv(); rerr != nil {
			err = rerr
		}
	}
	if err != nil {
		return time.Time{}, nil, r.streamErr(ctx, err)
	}
	if resp.ID != int64(id) {
		// Cannot happen: one request at a time, and a stream that an
		// error interrupted is never used again.
		return time.Time{}, nil, status.Error(codes.Internal,
			fmt.Sprintf("microlock: renewing lease %x: the response is for lease %x", int64(id), resp.ID))
	}
	return t0, resp, nil
}

// drop ends the stream; the next renewal opens a new one.
func (r *renewStream) drop() {
	if r.cancel != nil {
		r.cancel()
	}
	r.stream, r.cancel = nil, nil
}

// streamErr turns an error of the stream into what the etcd client's
// KeepAliveOnce returns: ctx's error if ctx ended, the server's error as an
// rpctypes error.
func (r *renewStream) streamErr(ctx context.Context, err error) error {
	if errors.Is(err, io.EOF) {
		return status.Error(codes.Unavailable, "microlock: lease keepalive stream closed by the server")
	}
	if c := status.Code(err); c == codes.Canceled || c == codes.DeadlineExceeded {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if r.base.Err() != nil {
			return errRenewClosed
		}
	}
	return rpctypes.Error(err)
}

// staleToken reports whether err is the server refusing a stream's auth
// token, which a new stream, opened with a new token, may not be.
func staleToken(err error) bool {
	return errors.Is(err, rpctypes.ErrInvalidAuthToken) ||
		errors.Is(err, rpctypes.ErrAuthOldRevision) ||
		errors.Is(err, rpctypes.ErrUserEmpty)
}
