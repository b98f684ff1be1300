package microlock

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// keyWatch notices the deletion of the keys of every hold on one lease. The
// deletion is the only loss signal when etcd itself drops a lease that we
// renewed (a stalled leader that resumes may revoke it: etcd #12528,
// #15247), so every way the watch can fail is either repaired or turned
// into a loss of the hold, never ignored:
//
//   - a watch that etcd cancels (compaction) or refuses to create (stale
//     token, permission, duplicate ID) is replaced after a read of the key
//     (recheck), or the hold ends if the key can no longer be read;
//   - a broken or silent stream is replaced, and every watch resumes from
//     the last revision known to be delivered, never from a header;
//   - on a client whose KV or Watcher is not etcd's own (a namespace, say),
//     the raw stream would watch the wrong key: each hold then watches
//     through client.Watcher instead (keywatch_fallback.go).
//
// With a stock client, all holds share one raw gRPC Watch stream with watch
// IDs chosen here (etcd 3.4 and later), instead of one watch and goroutines
// per hold: one client holding 10,000 locks must stay cheap. The stream's
// work is in keywatch_stream.go.
type keyWatch struct {
	client *clientv3.Client
	ctx    context.Context // ends with the lease
	cancel context.CancelFunc
	raw    bool           // client's KV and Watcher are etcd's own: use the shared stream
	wg     sync.WaitGroup // every goroutine below

	mu      sync.Mutex
	started bool
	limit   time.Duration // attemptTimeout of the lease's TTL, set by the first add
	watches map[*hold]*watchEntry
	nextID  int64 // the last watch ID used; IDs are never reused

	// The shared stream (raw).
	s *stream // the current stream; nil while connecting
	// staleProgress: the server answers progress requests out of order with
	// events (etcd before #15237), so they prove nothing about delivery.
	staleProgress bool
	kick          chan struct{} // the current stream has requests to send

	// The per-hold watches (fallback).
	gen uint64 // generation of the client's watch stream in use
}

// watchEntry is the watch of one hold's key.
type watchEntry struct {
	h *hold
	// from is the revision the watch (re)starts from. The key was there, ours,
	// at that revision, so no deletion before it can have been missed: it is
	// the key's create revision at first, and moves on only when etcd proves
	// that the key outlived a later one (a progress notification, after
	// which events up to it were delivered; or a read that found the key).
	// The creating put, at the start, is filtered out with every put.
	from     int64
	checking bool // a recheck runs: no watch on the stream meanwhile
	refusals int  // etcd refused or cancelled this watch, since it last worked

	// On the current stream (raw).
	id    int64  // watch ID, 0 if none
	seq   uint64 // position of its create request among the stream's requests
	acked bool   // etcd confirmed the create

	// Fallback.
	ctx         context.Context // ends when the hold is no longer watched
	cancel      context.CancelFunc
	watchCancel context.CancelFunc // ends the current client watch
	watchGen    uint64             // generation it runs in
}

// maxRefusals is how many times in a row etcd may refuse or cancel a hold's
// watch, each time repaired after a read of its key, before the hold is
// given up as unwatchable.
const maxRefusals = 3

func newKeyWatch(client *clientv3.Client) *keyWatch {
	ctx, cancel := context.WithCancel(context.Background())
	return &keyWatch{
		client:  client,
		ctx:     ctx,
		cancel:  cancel,
		raw:     stockClient(client),
		watches: make(map[*hold]*watchEntry),
		kick:    make(chan struct{}, 1),
	}
}

// stockClient reports whether client's KV and Watcher are the ones
// clientv3.New makes. Only then does a raw stream on the client's
// connection see the keys that the client's requests wrote: a namespace
// wrapper, for one, adds a prefix to every key.
func stockClient(client *clientv3.Client) bool {
	return reflect.TypeOf(client.Watcher) == reflect.TypeOf(clientv3.NewWatchFromWatchClient(nil, nil)) &&
		reflect.TypeOf(client.KV) == reflect.TypeOf(clientv3.NewKVFromKVClient(nil, nil))
}

// add watches h's key for deletion from the revision it was created at.
// It never blocks on the network.
func (w *keyWatch) add(h *hold) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx.Err() != nil || w.watches[h] != nil {
		return
	}
	e := &watchEntry{h: h, from: h.rev.Load()}
	w.watches[h] = e
	if !w.started {
		w.started = true
		// Every hold of a keyWatch is on its lease: one TTL.
		w.limit = attemptTimeout(h.lease.ttl)
		w.wg.Add(1)
		if w.raw {
			go w.run()
		} else {
			go w.probeLoop()
		}
	}
	if !w.raw {
		e.ctx, e.cancel = context.WithCancel(w.ctx)
		w.wg.Add(1)
		go w.follow(e)
		return
	}
	w.createLocked(e)
}

// remove stops watching h's key.
func (w *keyWatch) remove(h *hold) {
	w.mu.Lock()
	defer w.mu.Unlock()
	e := w.watches[h]
	if e == nil {
		return
	}
	delete(w.watches, h)
	if e.cancel != nil {
		e.cancel()
	}
	w.dropLocked(e)
}

// stop ends the stream and waits for the goroutines. Cancelling under mu
// orders it against add, which starts goroutines under mu only while ctx is
// live.
func (w *keyWatch) stop() {
	w.mu.Lock()
	w.cancel()
	w.mu.Unlock()
	w.wg.Wait()
}

// recheck reads e's key after etcd cancelled or refused its watch, which
// then said nothing about a deletion. The key gone (or another one in its
// place) is a loss; a key that etcd will not let us read is a loss too,
// since nothing would tell us of its deletion; otherwise the key is watched
// again from the revision of the read. refused is the stream that refused
// the watch, if it was refused.
func (w *keyWatch) recheck(e *watchEntry, why string, refused *stream) {
	defer w.wg.Done()
	from, ok := w.readKey(w.ctx, e.h)
	if !ok {
		return
	}
	w.mu.Lock()
	if w.watches[e.h] != e {
		w.mu.Unlock()
		return
	}
	e.checking = false
	e.from = max(e.from, from)
	if n := e.refusals; n >= maxRefusals {
		w.mu.Unlock()
		w.unwatchable(e.h, fmt.Errorf("etcd refused or cancelled its watch %d times in a row, last: %s", n, why))
		return
	}
	if refused != nil && w.s == refused {
		// Most refusals come from the stream itself: its auth token was
		// issued before a change to users or roles, or has expired. A new
		// stream gets a new token, and watches every key again.
		refused.cancel()
	} else {
		w.createLocked(e)
	}
	w.mu.Unlock()
}

// readKey reads h's key, retrying transient errors, and returns the revision
// to watch it from: that of the read, which found it. It reports false if
// the hold ended, now or before, or ctx did.
func (w *keyWatch) readKey(ctx context.Context, h *hold) (int64, bool) {
	pause := 100 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), w.limit)
		resp, err := w.client.Get(actx, h.key)
		cancel()
		switch {
		case ctx.Err() != nil || h.ctx.Err() != nil:
			return 0, false
		case err == nil:
			if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != h.rev.Load() {
				h.lostKey()
				return 0, false
			}
			return resp.Header.Revision, true
		case !transient(err):
			w.unwatchable(h, err)
			return 0, false
		}
		t := time.NewTimer(pause)
		select {
		case <-t.C:
		case <-ctx.Done():
		case <-h.ctx.Done():
		}
		t.Stop()
		pause = min(2*pause, w.limit)
	}
}

// unwatchable ends h as lost because its key can no longer be watched: the
// deletion of the key, perhaps by etcd itself, would go unnoticed.
func (w *keyWatch) unwatchable(h *hold, err error) {
	if h.releasing.Load() {
		return // Unlock's own answer decides
	}
	if h.lose(LossWatchFailed, "its key can no longer be watched", err) {
		h.lease.detach(h)
		h.emitLostAsync()
	}
}
