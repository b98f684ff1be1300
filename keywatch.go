package microlock

import (
	"context"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// keyWatch notices the deletion of the keys of every hold on one lease, over
// one etcd watch stream served by two goroutines, instead of one watch and
// two goroutines per hold (the etcd client's and a reader): one client
// holding 10,000 locks must stay cheap. Each hold's key gets a watch on the
// stream, identified by a watch ID this side assigns (etcd 3.4 and later).
type keyWatch struct {
	client *clientv3.Client
	ctx    context.Context // ends with the lease
	cancel context.CancelFunc
	wg     sync.WaitGroup // run and its helpers

	mu      sync.Mutex
	started bool
	nextID  int64
	byID    map[int64]*hold
	ids     map[*hold]int64
	from    map[*hold]int64      // revision each watch resumes from
	queue   []*pb.WatchRequest   // requests for the current stream
	kick    chan struct{}        // queue is not empty
	stream  pb.Watch_WatchClient // current stream, nil while connecting
}

func newKeyWatch(client *clientv3.Client) *keyWatch {
	ctx, cancel := context.WithCancel(context.Background())
	return &keyWatch{
		client: client,
		ctx:    ctx,
		cancel: cancel,
		byID:   make(map[int64]*hold),
		ids:    make(map[*hold]int64),
		from:   make(map[*hold]int64),
		kick:   make(chan struct{}, 1),
	}
}

// add watches h's key for deletion from the revision after it was created.
// It never blocks on the network.
func (w *keyWatch) add(h *hold) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx.Err() != nil {
		return
	}
	if !w.started {
		w.started = true
		w.wg.Add(1)
		go w.run()
	}
	w.nextID++
	id := w.nextID
	w.byID[id], w.ids[h], w.from[h] = h, id, h.rev.Load()+1
	if w.stream != nil {
		w.enqueueLocked(createRequest(id, h.key, w.from[h]))
	}
}

// remove stops watching h's key.
func (w *keyWatch) remove(h *hold) {
	w.mu.Lock()
	defer w.mu.Unlock()
	id, ok := w.ids[h]
	if !ok {
		return
	}
	delete(w.byID, id)
	delete(w.ids, h)
	delete(w.from, h)
	if w.stream != nil {
		w.enqueueLocked(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{
			CancelRequest: &pb.WatchCancelRequest{WatchId: id}}})
	}
}

// stop ends the stream and waits for the goroutines. Cancelling under mu
// orders it against add, which starts run under mu only while ctx is live.
func (w *keyWatch) stop() {
	w.mu.Lock()
	w.cancel()
	w.mu.Unlock()
	w.wg.Wait()
}

func createRequest(id int64, key string, from int64) *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
		Key:           []byte(key),
		StartRevision: from,
		Filters:       []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT},
		WatchId:       id,
	}}}
}

func (w *keyWatch) enqueueLocked(req *pb.WatchRequest) {
	w.queue = append(w.queue, req)
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// run keeps a stream open while the lease lives: it sends queued requests,
// dispatches responses, and on a broken stream opens a new one and watches
// every key again from where it left off.
func (w *keyWatch) run() {
	defer w.wg.Done()
	pause := time.Duration(0)
	for w.ctx.Err() == nil {
		if pause > 0 {
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-w.ctx.Done():
				t.Stop()
				return
			}
		}
		if w.serve() {
			pause = 0
		}
		pause = min(max(2*pause, 100*time.Millisecond), 2*time.Second)
	}
}

// serve runs one stream until it breaks, and reports whether it carried
// anything.
func (w *keyWatch) serve() (progress bool) {
	// WithRequireLeader: a member cut off from its cluster ends the stream
	// instead of keeping it silently stale.
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(w.ctx))
	defer cancel()
	stream, err := pb.NewWatchClient(w.client.ActiveConnection()).Watch(ctx)
	if err != nil {
		return false
	}
	w.mu.Lock()
	w.stream = stream
	w.queue = w.queue[:0]
	for h, id := range w.ids {
		w.queue = append(w.queue, createRequest(id, h.key, w.from[h]))
	}
	if len(w.queue) > 0 {
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.stream = nil
		w.mu.Unlock()
	}()

	responses := make(chan *pb.WatchResponse)
	failed := make(chan struct{})
	var recv sync.WaitGroup
	recv.Add(1)
	go func() {
		defer recv.Done()
		defer close(failed)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case responses <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer recv.Wait()
	defer cancel()

	for {
		select {
		case <-w.kick:
			w.mu.Lock()
			reqs := w.queue
			w.queue = nil
			w.mu.Unlock()
			for _, req := range reqs {
				if stream.Send(req) != nil {
					return progress
				}
			}
		case resp := <-responses:
			progress = true
			w.dispatch(resp)
		case <-failed:
			return progress
		case <-w.ctx.Done():
			return progress
		}
	}
}

// dispatch hands a response to the hold it concerns.
func (w *keyWatch) dispatch(resp *pb.WatchResponse) {
	w.mu.Lock()
	h := w.byID[resp.WatchId]
	if h == nil {
		w.mu.Unlock()
		return
	}
	deleted := false
	for _, ev := range resp.Events {
		deleted = deleted || ev.Type == mvccpb.DELETE
	}
	if resp.Header != nil && resp.Header.Revision+1 > w.from[h] {
		w.from[h] = resp.Header.Revision + 1
	}
	w.mu.Unlock()
	switch {
	case deleted:
		h.lostKey()
	case resp.Canceled:
		// The server dropped this watch (its start revision was compacted,
		// say): read the key instead, and watch again from there.
		w.wg.Add(1)
		go w.recheck(h)
	}
}

// recheck reads h's key after its watch was cancelled by the server.
func (w *keyWatch) recheck(h *hold) {
	defer w.wg.Done()
	for w.ctx.Err() == nil && h.ctx.Err() == nil {
		resp, err := w.client.Get(h.ctx, h.key)
		if err == nil {
			if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != h.rev.Load() {
				h.lostKey()
				return
			}
			w.mu.Lock()
			if id, ok := w.ids[h]; ok {
				w.from[h] = resp.Header.Revision + 1
				if w.stream != nil {
					w.enqueueLocked(createRequest(id, h.key, w.from[h]))
				}
			}
			w.mu.Unlock()
			return
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-t.C:
		case <-h.ctx.Done():
			t.Stop()
		}
	}
}
