package microlock

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/singleflight"
)

// leaseKey identifies a shared lease: one per client and requested TTL.
type leaseKey struct {
	client *clientv3.Client
	ttl    int64 // requested, in seconds
}

// leaseTable holds the leases in use, per client and TTL. It is the package's
// only mutable state: WithLock takes nothing but a client, yet a loop of
// WithLock calls must not pay a lease grant and revoke per call, so leases
// must outlive the calls that use them. A lease leaves the table when it is
// lost, when its client is closed, or after leaseLinger unused.
type leaseTable struct {
	mu     sync.Mutex
	leases map[leaseKey]*lease
	// grants runs one grant per key at a time, shared by every caller that
	// asks meanwhile, apart from any one caller's context: a caller whose
	// context ends stops waiting, and the others keep waiting for the grant.
	grants singleflight.Group
	// etcd is the etcd of a client's leases; nil means the client itself
	// (clientEtcd). The timing tests set it to a fake.
	etcd func(*clientv3.Client) leaseEtcd
}

var leases = leaseTable{leases: make(map[leaseKey]*lease)}

// acquire returns a live lease for (client, ttl) with a reference taken for
// the caller, granting one if needed.
func (t *leaseTable) acquire(ctx context.Context, client *clientv3.Client, ttl int64) (*lease, error) {
	k := leaseKey{client, ttl}
	for {
		t.mu.Lock()
		if l := t.leases[k]; l != nil {
			if l.ref() {
				t.mu.Unlock()
				return l, nil
			}
			delete(t.leases, k) // ending; its goroutine is on its way out
		}
		t.mu.Unlock()
		ch := t.grants.DoChan(fmt.Sprintf("%p/%d", client, ttl), func() (any, error) {
			return nil, t.grant(k)
		})
		select {
		case r := <-ch:
			if r.Err != nil {
				return nil, r.Err
			}
			// Granted and in the table, unused: take it. Should another
			// caller have used it up meanwhile (it can only end early),
			// the loop grants again.
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// grant grants a lease for k, starts its renewal loop and puts it in the
// table, unused: it lingers for leaseLinger unless a caller takes it. It
// runs with a context of its own, bounded by grantTimeout, on the goroutine
// of the singleflight group.
func (t *leaseTable) grant(k leaseKey) error {
	l, err := grant(context.Background(), k, t.etcdOf(k.client))
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.idleSince = time.Now()
	l.mu.Unlock()
	l.start()
	if time.Until(l.currentDeadline()) < l.ttl/3 {
		// The grant came back slowly (etcd regaining quorum, say):
		// renew before the first hold relies on it.
		rctx, cancel := context.WithDeadline(context.Background(), l.currentDeadline())
		_, err := l.keepAliveOnce(rctx)
		cancel()
		if err != nil {
			l.retire() // unused: revoked at once
			return err
		}
	}
	t.mu.Lock()
	t.leases[k] = l
	t.mu.Unlock()
	l.poke() // unused: start counting its idle time
	return nil
}

// remove drops l from the table if it is still there.
func (t *leaseTable) remove(l *lease) {
	t.mu.Lock()
	if t.leases[l.key] == l {
		delete(t.leases, l.key)
	}
	t.mu.Unlock()
}

// etcdOf is how the leases of client reach etcd: through the client itself,
// unless a test put a fake in the table.
func (t *leaseTable) etcdOf(client *clientv3.Client) leaseEtcd {
	if t.etcd != nil {
		return t.etcd(client)
	}
	return clientEtcd{client}
}
