package microlock

import (
	"context"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The fake etcd of the lease timing tests (lease_timing_test.go): it stands
// behind leaseEtcd, inside a testing/synctest bubble, and answers a lease's
// grant, renewals and revoke as a test tells it to.

// fakeEtcd answers a lease's etcd calls inside a bubble, as told, and
// records when each came.
type fakeEtcd struct {
	start      time.Time     // the bubble's start: the recorded instants are offsets from it
	grantAfter time.Duration // how long a grant takes
	// answer says how a renewal sent at offset sent goes: it is answered
	// after after (never, if negative) with the TTL ttl, or fails with err.
	answer func(sent time.Duration) (after time.Duration, ttl int64, err error)

	ctx         context.Context // Ctx: ends when the test closes the client
	closeClient context.CancelFunc

	mu       sync.Mutex
	granted  int64 // the TTL of the last grant, in seconds
	grants   []time.Duration
	renewals []fakeRenewal
	revokes  []time.Duration
}

// fakeRenewal is one renewal the fake received.
type fakeRenewal struct {
	sent time.Duration
	// void: its context ended the instant it was sent. When an attempt's
	// timeout and the timeout of the renewal it belongs to fire at the
	// same instant, keepAliveOnce may see the first alone and start a
	// second attempt, which the second ends at once.
	void bool
}

// newFakeEtcd makes a fake etcd in the current bubble. Renewals succeed at
// once with the TTL granted, unless answer says otherwise.
func newFakeEtcd() *fakeEtcd {
	f := &fakeEtcd{start: time.Now()}
	f.ctx, f.closeClient = context.WithCancel(context.Background())
	return f
}

func (f *fakeEtcd) now() time.Duration { return time.Since(f.start) }

func (f *fakeEtcd) Ctx() context.Context { return f.ctx }

func (f *fakeEtcd) Grant(ctx context.Context, ttl int64) (*clientv3.LeaseGrantResponse, error) {
	f.mu.Lock()
	f.grants = append(f.grants, f.now())
	id := clientv3.LeaseID(len(f.grants))
	f.granted = ttl
	f.mu.Unlock()
	t := time.NewTimer(f.grantAfter)
	defer t.Stop()
	select {
	case <-t.C:
		return &clientv3.LeaseGrantResponse{ID: id, TTL: ttl}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (f *fakeEtcd) Revoke(ctx context.Context, id clientv3.LeaseID) (*clientv3.LeaseRevokeResponse, error) {
	f.mu.Lock()
	f.revokes = append(f.revokes, f.now())
	f.mu.Unlock()
	return &clientv3.LeaseRevokeResponse{}, nil
}

func (f *fakeEtcd) renewer() leaseRenewer {
	ctx, cancel := context.WithCancel(context.Background())
	return &fakeRenewer{f: f, closed: ctx, stop: cancel}
}

// fakeRenewer is one lease's renewals on a fakeEtcd.
type fakeRenewer struct {
	f      *fakeEtcd
	closed context.Context // ended by close
	stop   context.CancelFunc
}

func (r *fakeRenewer) close() { r.stop() }

func (r *fakeRenewer) renew(ctx context.Context, id clientv3.LeaseID) (time.Time, *pb.LeaseKeepAliveResponse, error) {
	if err := ctx.Err(); err != nil {
		return time.Time{}, nil, err
	}
	if r.closed.Err() != nil {
		return time.Time{}, nil, errRenewClosed
	}
	t0 := time.Now()
	f := r.f
	sent := f.now()
	f.mu.Lock()
	f.renewals = append(f.renewals, fakeRenewal{sent: sent})
	n := len(f.renewals) - 1
	after, ttl, err := time.Duration(0), f.granted, error(nil)
	f.mu.Unlock()
	if f.answer != nil {
		after, ttl, err = f.answer(sent)
	}
	if after != 0 {
		var answered <-chan time.Time // never, if after < 0
		if after > 0 {
			t := time.NewTimer(after)
			defer t.Stop()
			answered = t.C
		}
		select {
		case <-answered:
		case <-ctx.Done():
			if f.now() == sent {
				f.mu.Lock()
				f.renewals[n].void = true
				f.mu.Unlock()
			}
			return time.Time{}, nil, ctx.Err()
		case <-r.closed.Done():
			return time.Time{}, nil, errRenewClosed
		}
	}
	if err != nil {
		return time.Time{}, nil, err
	}
	return t0, &pb.LeaseKeepAliveResponse{ID: int64(id), TTL: ttl}, nil
}

// sends returns the instants renewals were sent, but for void ones.
func (f *fakeEtcd) sends() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []time.Duration
	for _, r := range f.renewals {
		if !r.void {
			out = append(out, r.sent)
		}
	}
	return out
}

func (f *fakeEtcd) revoked() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.revokes)
}

// table returns a lease table of its own whose leases use f.
func (f *fakeEtcd) table() *leaseTable {
	return &leaseTable{leases: make(map[leaseKey]*lease), etcd: func(*clientv3.Client) leaseEtcd { return f }}
}

// acquireLease takes a lease of ttl seconds from tab at the current instant.
func acquireLease(t *testing.T, tab *leaseTable, client *clientv3.Client, ttl int64) *lease {
	t.Helper()
	l, err := tab.acquire(context.Background(), client, ttl)
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	return l
}

// closeAll closes f's client, which ends every lease on it, and waits for l.
func (f *fakeEtcd) closeAll(l *lease) {
	f.closeClient()
	<-l.done
}

// sleepUntil sleeps until offset at of the bubble's start and waits until
// everything due by then has run.
func (f *fakeEtcd) sleepUntil(at time.Duration) {
	time.Sleep(at - f.now())
	synctest.Wait()
}

func ended(l *lease) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ended
}
