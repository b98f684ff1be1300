package microlock

import (
	"context"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// leaseEtcd is what a lease asks of etcd about itself: its grant, its
// renewals, its revoke, and whether its client was closed. The holds' keys
// and their watches go to the client directly. In production it is the
// lease's own client (clientEtcd); the timing tests put a fake behind it, in
// a testing/synctest bubble where time is virtual.
type leaseEtcd interface {
	Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error)
	Revoke(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error)
	// Ctx is done once the client is closed.
	Ctx() context.Context
	// renewer returns what renews one lease, for the life of that lease.
	renewer() leaseRenewer
}

// leaseRenewer renews one lease, one renewal at a time (see renewStream).
type leaseRenewer interface {
	// renew renews lease id once, bounded by ctx, and returns the response
	// and when its request was sent. Errors are the etcd client's: a
	// server error as an rpctypes error, ctx's error when ctx ended, and
	// errRenewClosed once close was called.
	renew(ctx context.Context, id clientv3.LeaseID) (time.Time, *pb.LeaseKeepAliveResponse, error)
	// close ends the renewer, and any renewal in flight, for good.
	close()
}

// clientEtcd is a lease's etcd in production: its client, renewing on one
// stream per lease.
type clientEtcd struct{ *clientv3.Client }

func (c clientEtcd) renewer() leaseRenewer { return newRenewStream(c.Client) }
