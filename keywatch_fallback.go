package microlock

import (
	"context"
	"fmt"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// The key watch of a client whose KV or Watcher is not etcd's own, such as
// those of etcd's namespace package: a raw stream on the client's connection
// would see other keys than the client's requests wrote, so each hold
// watches its key through client.Watcher, with a goroutine of its own. It
// costs more per hold than the shared stream, and is held to the same
// standard:
//   - a watch that etcd cancels or refuses is replaced after a read of the
//     key (recheck), as on the shared stream;
//   - the client's watches of one generation share one gRPC stream (the etcd
//     client puts watches with the same metadata on one stream); probeLoop
//     checks that it answers, and when it does not, moves every watch to a
//     new generation, hence a new stream, which the balancer puts on
//     another member. A refusal also moves new watches to a new generation,
//     whose stream gets a new auth token.

// genKey is the metadata that tells the client's watch streams apart.
const genKey = "microlock-keywatch-generation"

// watchContext is ctx for a client watch of generation gen. Every
// generation, the first included, sends its key: the holds' watches never
// share a stream with the waits'.
func (w *keyWatch) watchContext(ctx context.Context, gen uint64) context.Context {
	return streamContext(ctx, genKey, gen+1)
}

// streamContext is ctx for a client watch on the gRPC stream of generation
// gen, told apart by metadata key; generation 0 sends no key. The etcd
// client puts watches whose contexts carry the same metadata on one stream,
// so a new generation moves later watches off a stream stuck on a paused
// member. WithRequireLeader: a member cut off from its cluster ends the
// stream instead of keeping it silently stale.
func streamContext(ctx context.Context, key string, gen uint64) context.Context {
	if gen != 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, key, strconv.FormatUint(gen, 10))
	}
	return clientv3.WithRequireLeader(ctx)
}

// follow watches e's key through client.Watcher until e.ctx ends.
func (w *keyWatch) follow(e *watchEntry) {
	defer w.wg.Done()
	pause := time.Duration(0)
	for e.ctx.Err() == nil && w.client.Ctx().Err() == nil {
		if pause > 0 {
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-e.ctx.Done():
			}
			t.Stop()
		}
		w.mu.Lock()
		gen, from := w.gen, e.from
		ctx, cancel := context.WithCancel(e.ctx)
		e.watchCancel, e.watchGen = cancel, gen
		w.mu.Unlock()
		r := w.followOnce(w.watchContext(ctx, gen), e, from)
		cancel()
		switch {
		case r.deleted:
			e.h.lostKey()
			return
		case r.ended != "":
			w.mu.Lock()
			e.refusals++
			n := e.refusals
			if !r.created && w.gen == gen {
				w.gen++ // refused: new watches go to a new stream
			}
			w.mu.Unlock()
			from, ok := w.readKey(e.ctx, e.h)
			if !ok {
				return
			}
			if n >= maxRefusals {
				w.unwatchable(e.h, fmt.Errorf("etcd refused or cancelled its watch %d times in a row, last: %s", n, r.ended))
				return
			}
			w.mu.Lock()
			e.from = max(e.from, from)
			w.mu.Unlock()
			pause = 0
		case r.created:
			pause = 0 // moved to a new generation: resume from e.from
		default:
			pause = min(max(2*pause, 100*time.Millisecond), 2*time.Second)
		}
	}
}

type followResult struct {
	deleted bool
	created bool   // etcd confirmed the watch
	ended   string // why etcd cancelled or refused it; empty if it did not
}

// followOnce runs one client watch of e's key from revision from, until it
// sees a deletion, etcd ends it, or ctx does.
func (w *keyWatch) followOnce(ctx context.Context, e *watchEntry, from int64) (r followResult) {
	ch := w.client.Watch(ctx, e.h.key, clientv3.WithRev(from), clientv3.WithFilterPut(), clientv3.WithCreatedNotify())
	for resp := range ch {
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete {
				r.deleted = true
				return r
			}
		}
		if err := resp.Err(); err != nil || resp.Canceled {
			if ctx.Err() == nil {
				r.ended = fmt.Sprint(err)
			}
			return r
		}
		if resp.Created && !r.created {
			r.created = true
			w.mu.Lock()
			e.refusals = 0
			w.mu.Unlock()
		}
	}
	return r
}

// probeLoop checks, every attempt timeout, that the client's watch stream of
// the current generation answers a watch create within the attempt timeout.
// If not, every watch moves to a new generation.
func (w *keyWatch) probeLoop() {
	defer w.wg.Done()
	t := time.NewTimer(w.limit)
	defer t.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		gen := w.gen
		var key string
		for h := range w.watches {
			key = h.key // a key we may read, so that it is not refused
			break
		}
		w.mu.Unlock()
		if key != "" {
			answered, refused := w.probe(gen, key)
			w.mu.Lock()
			if (!answered || refused) && w.gen == gen && w.ctx.Err() == nil {
				w.gen++
				if !answered {
					for _, e := range w.watches {
						if e.watchGen == gen && e.watchCancel != nil {
							e.watchCancel()
						}
					}
				}
			}
			w.mu.Unlock()
		}
		t.Reset(w.limit)
	}
}

// probe creates a throwaway watch on the stream of generation gen.
func (w *keyWatch) probe(gen uint64, key string) (answered, refused bool) {
	ctx, cancel := context.WithTimeout(w.watchContext(w.ctx, gen), w.limit)
	defer cancel()
	// The etcd client returns the channel once etcd answered the create,
	// or once ctx is done.
	resp, ok := <-w.client.Watch(ctx, key, clientv3.WithCreatedNotify())
	if !ok {
		return false, false
	}
	return true, !resp.Created || resp.Canceled
}
