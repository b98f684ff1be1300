package microlock_test

import (
	"context"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestServerFeatures checks, one by one and with etcd's client alone, the
// server features that microlock's requests rely on, so that a run against
// another etcd version (make compat) names the feature and the call that
// needs it rather than failing somewhere in a lock test. It logs the
// server's version.
//
// The one feature with a minimum version is the compare over a key range
// (Compare.range_end, etcd 3.3): TryLock's single request is "put if
// nothing is under the prefix". A server older than 3.3 ignores the range
// and compares one key, which would let TryLock take a held lock; microlock
// does not check the server's version, so 3.3 is its documented minimum,
// and 3.4 the oldest tested.
func TestServerFeatures(t *testing.T) {
	c := client(t)
	ctx := ctxTimeout(t, 20*time.Second)
	st, err := c.Status(ctx, shared.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd server %s", st.Version)
	pfx := testKey(t)

	x := featureCase{c, ctx, pfx}
	t.Run("TryLock: Txn compare over a key range", x.rangeCompare)
	t.Run("Lock: queue reads sorted by create revision", x.sortedReads)
	t.Run("Lock and Watch: watches from a revision, filtered, requiring a leader", x.filteredWatch)
	t.Run("leases: granted TTL, keep-alive, revoke", x.leases)

	if _, err := c.Delete(ctx, pfx, clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
}

// featureCase is what the subtests of TestServerFeatures share: a client,
// and a prefix of the test's own.
type featureCase struct {
	c   *clientv3.Client
	ctx context.Context
	pfx string
}

// rangeCompare: TryLock's compare over a key range is true only while
// nothing is under the prefix, and the Else branch reads the holder.
func (x featureCase) rangeCompare(t *testing.T) {
	c, ctx, pfx := x.c, x.ctx, x.pfx
	free := clientv3.Compare(clientv3.CreateRevision(pfx+"range/"), "=", 0).WithPrefix()
	resp, err := c.Txn(ctx).If(free).Then(clientv3.OpPut(pfx+"range/a", "")).Commit()
	if err != nil || !resp.Succeeded {
		t.Fatalf("compare on an empty range = %v, %v; want true", resp, err)
	}
	// The range holds a key now, though not at the range's start key.
	resp, err = c.Txn(ctx).If(free).Then(clientv3.OpPut(pfx+"range/b", "")).
		Else(clientv3.OpGet(pfx+"range/", clientv3.WithFirstCreate()...)).Commit()
	if err != nil || resp.Succeeded {
		t.Fatalf("compare on a range with a key = %v, %v; want false (range compares need etcd 3.3)", resp, err)
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) != 1 || string(kvs[0].Key) != pfx+"range/a" {
		t.Fatalf("the Else branch read %v, want the holder's key", kvs)
	}
}

// sortedReads: Lock's reads of the queue, sorted by create revision and
// bounded by a maximum create revision.
func (x featureCase) sortedReads(t *testing.T) {
	c, ctx, pfx := x.c, x.ctx, x.pfx
	var revs []int64
	for _, k := range []string{"q/c", "q/a", "q/b"} {
		resp, err := c.Put(ctx, pfx+k, "")
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, resp.Header.Revision)
	}
	last, err := c.Get(ctx, pfx+"q/", clientv3.WithLastCreate()...)
	if err != nil || len(last.Kvs) != 1 || string(last.Kvs[0].Key) != pfx+"q/b" {
		t.Fatalf("WithLastCreate = %v, %v; want q/b", last, err)
	}
	opts := append(clientv3.WithLastCreate(), clientv3.WithMaxCreateRev(revs[1]), clientv3.WithLimit(2))
	pred, err := c.Get(ctx, pfx+"q/", opts...)
	if err != nil || len(pred.Kvs) != 2 || string(pred.Kvs[0].Key) != pfx+"q/a" || string(pred.Kvs[1].Key) != pfx+"q/c" {
		t.Fatalf("own key and predecessor = %v, %v; want q/a then q/c", pred, err)
	}
}

// filteredWatch: a watch from a past revision, with puts filtered out and
// a leader required, replays the delete alone.
func (x featureCase) filteredWatch(t *testing.T) {
	c, ctx, pfx := x.c, x.ctx, x.pfx
	put, err := c.Put(ctx, pfx+"w/k", "v")
	if err != nil {
		t.Fatal(err)
	}
	del, err := c.Delete(ctx, pfx+"w/k")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// Both events are in the past: the watch replays them from put's revision.
	ch := c.Watch(wctx, pfx+"w/", clientv3.WithPrefix(), clientv3.WithRev(put.Header.Revision), clientv3.WithFilterPut())
	select {
	case wr := <-ch:
		if err := wr.Err(); err != nil {
			t.Fatal(err)
		}
		if len(wr.Events) != 1 || wr.Events[0].Type != mvccpb.DELETE || wr.Events[0].Kv.ModRevision != del.Header.Revision {
			t.Fatalf("events %v, want only the delete at %d", wr.Events, del.Header.Revision)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no watch response")
	}
}

// leases: the granted TTL, a keep-alive, a revoke, and a keep-alive of the
// revoked lease that says it is gone.
func (x featureCase) leases(t *testing.T) {
	c, ctx := x.c, x.ctx
	g, err := c.Grant(ctx, 3)
	if err != nil || g.TTL < 3 {
		t.Fatalf("Grant(3) = %v, %v", g, err)
	}
	ka, err := c.KeepAliveOnce(ctx, g.ID)
	if err != nil || ka.TTL < 3 {
		t.Fatalf("KeepAliveOnce = %v, %v", ka, err)
	}
	if _, err := c.Revoke(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	// A keep-alive of a revoked lease answers TTL <= 0 or an error,
	// both of which the renewal loop reads as "the lease is gone".
	ka, err = c.KeepAliveOnce(ctx, g.ID)
	if err == nil && ka.TTL > 0 {
		t.Fatalf("KeepAliveOnce of a revoked lease = TTL %d", ka.TTL)
	}
}
