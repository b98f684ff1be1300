package bench

import (
	"context"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkFloor measures the raw etcd requests that bound a lock cycle from
// below. TxnDelete is the two commits every cycle needs: a put-if-absent Txn
// of a key bound to a lease, then its Delete. Txn is one write Txn; Get one
// linearizable read.
func BenchmarkFloor(b *testing.B) {
	b.Run("TxnDelete", func(b *testing.B) {
		cli, key, lease := floorSetup(b)
		ctx := benchCtx(b)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if err := putIfAbsentDelete(ctx, cli, key, lease); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Txn", func(b *testing.B) {
		cli, key, lease := floorSetup(b)
		ctx := benchCtx(b)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := cli.Txn(ctx).Then(clientv3.OpPut(key, "bench", clientv3.WithLease(lease))).Commit(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Get", func(b *testing.B) {
		cli, key, lease := floorSetup(b)
		ctx := benchCtx(b)
		if _, err := cli.Put(ctx, key, "bench", clientv3.WithLease(lease)); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			if _, err := cli.Get(ctx, key); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// floorSetup returns a client, a key for the benchmark and a lease that is
// kept alive until the benchmark function returns, and then revoked. (Its
// renewals, one every few seconds, are not in any figure.)
func floorSetup(b *testing.B) (*clientv3.Client, string, clientv3.LeaseID) {
	b.Helper()
	cli := benchClient(b)
	resp, err := cli.Grant(benchCtx(b), int64(benchTTL.Seconds()))
	if err != nil {
		b.Fatal(err)
	}
	kctx, kcancel := context.WithCancel(context.Background())
	acks, err := cli.KeepAlive(kctx, resp.ID)
	if err != nil {
		kcancel()
		b.Fatal(err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for range acks { // closed when kctx ends
		}
	}()
	b.Cleanup(func() {
		kcancel()
		<-drained
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		_, _ = cli.Revoke(ctx, resp.ID)
	})
	return cli, freshKey(b), resp.ID
}
