package microlock

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// anchorMaxPause bounds the pause before an anchor watch that the client
// closed is opened again.
const anchorMaxPause = 30 * time.Second

// waitAnchor keeps one idle watch open, for the life of a lease whose holds
// have waited in a queue, on the etcd client's watch stream that waits use.
//
// A wait (waitDelete) watches through the client's Watch, which runs every
// watch opened with the same metadata on one shared gRPC stream, opens that
// stream when it has none, and closes it when its last watch ends. Each
// stream opened costs an Authenticate when the client logs in with a
// password, so without the anchor every wait in a queue would pay one. The
// anchor is a watch of the lock's prefix itself, a key no lock writes, with
// both puts and deletes filtered out: the server sends it nothing, and
// keeps one watcher for it. It uses the metadata the waits use
// (WithRequireLeader, and the stream generation), so it shares their stream; a
// caller whose context adds metadata of its own gets a stream of its own,
// and the anchor does not help it.
//
// The key is the prefix of the lock whose hold waited first: a client that
// may lock under a prefix may read it, and one key keeps the stream open
// for waits under any prefix.
type waitAnchor struct {
	mu      sync.Mutex
	on      bool   // a watch is open (its goroutine runs)
	stopped bool   // stop was called: start has nothing to do
	gen     uint64 // the wait stream generation it runs in (lease.waitGen)
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// start opens the anchor, watching key on the stream of generation gen,
// unless it is open there already or was stopped. Moving to a new
// generation closes the old watch first. It never blocks on the network.
func (a *waitAnchor) start(client *clientv3.Client, key string, gen uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopped || (a.on && a.gen == gen) {
		return
	}
	if a.on {
		a.cancel() // its goroutine returns without waiting on the network
	}
	a.on, a.gen = true, gen
	ctx, cancel := context.WithCancel(streamContext(context.Background(), watchGenKey, gen))
	a.cancel = cancel
	a.wg.Add(1)
	go a.run(ctx, client, key)
}

// stop closes the anchor for good and waits for its goroutines. It does not
// wait for the client to close the watch: the client's own goroutines end
// that, or end with the client.
func (a *waitAnchor) stop() {
	a.mu.Lock()
	a.stopped = true
	if a.on {
		a.cancel()
	}
	a.mu.Unlock()
	a.wg.Wait()
}

// run keeps the watch open until ctx ends. The client closes a watch for
// good when the stream fails in a way it does not resume from (the member
// lost its leader, say): it is opened again after a pause, which grows
// while the watch keeps closing soon after it opens, so that an anchor
// never costs more streams than the waits it serves.
func (a *waitAnchor) run(ctx context.Context, client *clientv3.Client, key string) {
	defer a.wg.Done()
	pause := time.Duration(0)
	for {
		opened := time.Now()
		wctx, cancel := context.WithCancel(ctx)
		ch := client.Watch(wctx, key, clientv3.WithFilterPut(), clientv3.WithFilterDelete())
	drain:
		for {
			select {
			case _, ok := <-ch:
				if !ok {
					break drain
				}
			case <-ctx.Done():
				cancel()
				return
			}
		}
		cancel()
		if ctx.Err() != nil || client.Ctx().Err() != nil {
			return
		}
		if time.Since(opened) >= anchorMaxPause {
			pause = 0
		}
		pause = min(max(2*pause, time.Second), anchorMaxPause)
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// anchorWaits keeps the client's watch stream open for the waits in a queue
// of the lease's holds, from the first on, for the lease's life; pfx is the
// waiting lock's prefix, gen the generation of the stream the wait uses.
func (l *lease) anchorWaits(pfx string, gen uint64) {
	l.anchor.start(l.client, pfx, gen)
}
