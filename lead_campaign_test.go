package microlock_test

import (
	"context"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/microlock/microlock"
)

// TestLeadCandidateKeyVanishes is etcd issue #19597: a candidate whose key
// goes while it waits (its lease revoked, or the key deleted) must stop
// waiting at once and enter the queue again, and must never report
// leadership without a key. etcd's Election.Campaign waits on; Lead
// campaigns again, with a new key, and leads with it once the leader
// resigns.
func TestLeadCandidateKeyVanishes(t *testing.T) {
	for _, how := range []string{"lease revoked", "key deleted"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			c := client(t)
			key := testKey(t)
			ctx := ctxTimeout(t, 60*time.Second)
			s, err := concurrency.NewSession(c, concurrency.WithTTL(10))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			leader := concurrency.NewElection(s, key)
			if err := leader.Campaign(ctx, "etcd-leader"); err != nil {
				t.Fatal(err)
			}

			var log eventLog
			terms := make(chan int64, 1)
			res := runLead(t, ctx, c, key, func(ctx context.Context) error {
				if err := ownsKey(ctx, c); err != nil {
					return err
				}
				m, _ := microlock.FromContext(ctx)
				terms <- m.Token()
				<-ctx.Done()
				return ctx.Err()
			}, microlock.WithNodeID("candidate"), microlock.OnEvent(log.hook), quickRetry())

			first := waitCandidate(t, c, key, 0)
			switch how {
			case "lease revoked":
				if _, err := c.Revoke(ctx, clientv3.LeaseID(first.Lease)); err != nil {
					t.Fatal(err)
				}
			default:
				if _, err := c.Delete(ctx, string(first.Key)); err != nil {
					t.Fatal(err)
				}
			}
			// The candidate is back in the queue with a new key...
			second := waitCandidate(t, c, key, first.CreateRevision)
			if how == "lease revoked" && second.Lease == first.Lease {
				t.Fatalf("new candidate key %s on the revoked lease %x", second.Key, first.Lease)
			}
			// ...and has not led meanwhile.
			if n := log.count(microlock.Acquired); n != 0 {
				t.Fatalf("%d terms started while etcd's Election led", n)
			}
			if err := leader.Resign(ctx); err != nil {
				t.Fatal(err)
			}
			if tok := recv(t, terms, "term after the resign"); tok != second.CreateRevision {
				t.Fatalf("term token %d, want the new key's create revision %d", tok, second.CreateRevision)
			}
			select {
			case err := <-res:
				t.Fatalf("Lead returned %v", err)
			default:
			}
		})
	}
}

// waitCandidate waits until the microlock candidate has a key in key's
// queue created after rev, and returns it.
func waitCandidate(t *testing.T, c *clientv3.Client, key string, after int64) *mvccpb.KeyValue {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		resp, err := c.Get(context.Background(), key+"/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			if string(kv.Value) == "candidate" && kv.CreateRevision > after {
				return kv
			}
		}
	}
	t.Fatalf("no candidate key created after revision %d", after)
	return nil
}
