package microlock

import (
	"context"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
	"go.uber.org/zap"
)

// These tests drive the shared stream's bookkeeping with the answers of etcd
// versions other than the one the tests run (3.4 refuses a create with the
// requested ID; before etcd #15237 a progress request is answered at once,
// out of order). The stream's behaviour against a real etcd is tested in
// keywatch_test.go.

// testKeyWatch returns a keyWatch, already stopped so that it starts no
// stream and its rechecks end at once, with a current stream to drive.
func testKeyWatch(t *testing.T) (*keyWatch, *stream) {
	t.Helper()
	// Never dialled: every request is made with a cancelled context.
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	w := newKeyWatch(c)
	w.started, w.limit = true, time.Second
	s := &stream{cancel: func() {}, byID: make(map[int64]*watchEntry), sniffing: true}
	w.s = s
	t.Cleanup(func() {
		w.cancel()
		w.wg.Wait()
	})
	return w, s
}

func testHold(key string, rev int64) *hold {
	h := &hold{key: key}
	h.rev.Store(rev)
	h.ctx, h.cancel = context.WithCancelCause(context.Background())
	return h
}

// testAdd adds a hold on key at rev and returns its entry.
func (w *keyWatch) testAdd(t *testing.T, key string, rev int64) *watchEntry {
	t.Helper()
	h := testHold(key, rev)
	w.add(h)
	return w.watches[h]
}

func created(id int64, canceled bool, rev int64) *pb.WatchResponse {
	r := &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: rev}, WatchId: id, Created: true, Canceled: canceled}
	if canceled {
		r.CancelReason = "etcdserver: permission denied"
	}
	return r
}

func progressAt(rev int64) *pb.WatchResponse {
	return &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: rev}, WatchId: clientv3.InvalidWatchID}
}

func TestKeyWatchCreatesMatchedInOrder(t *testing.T) {
	w, s := testKeyWatch(t)
	e1, e2, e3 := w.testAdd(t, "a", 10), w.testAdd(t, "b", 11), w.testAdd(t, "c", 12)
	reqs := w.take(s)
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3 creates", len(reqs))
	}
	for i, e := range []*watchEntry{e1, e2, e3} {
		cr := reqs[i].GetCreateRequest()
		if cr == nil || string(cr.Key) != e.h.key || cr.WatchId != e.id || cr.StartRevision != e.h.rev.Load() {
			t.Fatalf("request %d = %v, want a create of %q from %d with ID %d", i, reqs[i], e.h.key, e.h.rev.Load(), e.id)
		}
	}
	e4 := w.testAdd(t, "d", 13)
	w.cancel() // the rechecks below end at once
	if !w.dispatch(s, created(e1.id, false, 20)) || !e1.acked {
		t.Fatal("the first create's reply was not taken as its confirmation")
	}
	if e1.from != 10 {
		t.Fatalf("from = %d after the created reply, want 10: its header proves nothing", e1.from)
	}
	// etcd 3.4 refuses with the requested ID, 3.5 and later with -1: both
	// are matched by order.
	id2 := e2.id
	if !w.dispatch(s, created(id2, true, 20)) || e2.id != 0 || !e2.checking || e2.refusals != 1 || s.byID[id2] != nil {
		t.Fatalf("refusal with the requested ID: entry %+v", e2)
	}
	if !w.dispatch(s, created(clientv3.InvalidWatchID, true, 20)) || e3.id != 0 || !e3.checking {
		t.Fatalf("refusal with ID -1: entry %+v", e3)
	}
	// A reply to no create, or to another ID than the next one: the stream
	// is out of step and must start afresh.
	if w.dispatch(s, created(99, false, 20)) {
		t.Fatal("a created reply to no create was accepted")
	}
	w.take(s)
	if w.dispatch(s, created(e4.id+1, false, 20)) {
		t.Fatal("a created reply with another ID than the create's was accepted")
	}
}

func TestKeyWatchCompactedWatchIsCancelled(t *testing.T) {
	w, s := testKeyWatch(t)
	e := w.testAdd(t, "a", 10)
	w.take(s)
	w.dispatch(s, created(e.id, false, 20))
	w.cancel()
	id := e.id
	w.dispatch(s, &pb.WatchResponse{Header: &pb.ResponseHeader{Revision: 30}, WatchId: id, Canceled: true, CompactRevision: 25})
	if e.id != 0 || !e.checking || s.byID[id] != nil {
		t.Fatalf("entry after compaction: %+v", e)
	}
	reqs := w.take(s)
	if len(reqs) != 1 || reqs[0].GetCancelRequest().GetWatchId() != id {
		t.Fatalf("requests after compaction: %v, want the cancel of %d, which etcd keeps taken", reqs, id)
	}
}

func TestKeyWatchProgressCoversConfirmedWatches(t *testing.T) {
	w, s := testKeyWatch(t)
	before, late := w.testAdd(t, "a", 10), w.testAdd(t, "b", 11)
	w.take(s)
	w.dispatch(s, created(before.id, false, 20)) // late's reply is still to come
	s.queue = append(s.queue, streamOp{progress: true})
	if reqs := w.take(s); len(reqs) != 1 || reqs[0].GetProgressRequest() == nil {
		t.Fatalf("requests = %v, want one progress request", reqs)
	}
	after := w.testAdd(t, "c", 12)
	w.take(s)
	w.dispatch(s, progressAt(40))
	if before.from != 40 {
		t.Errorf("confirmed before the progress request: from %d, want 40", before.from)
	}
	if late.from != 11 {
		t.Errorf("confirmed after the notification: from %d, want 11 (its catch-up may still come)", late.from)
	}
	if after.from != 12 {
		t.Errorf("created after the progress request: from %d, want 12", after.from)
	}
	// An unrequested notification moves nothing.
	w.dispatch(s, progressAt(50))
	if before.from != 40 {
		t.Errorf("unrequested notification moved from to %d", before.from)
	}
}

func TestKeyWatchStaleProgressIgnored(t *testing.T) {
	w, s := testKeyWatch(t)
	e := w.testAdd(t, "a", 10)
	// The answer to the request sent before any create: only a server that
	// answers out of order sends it.
	w.dispatch(s, progressAt(30))
	if !w.staleProgress {
		t.Fatal("an answer to the sniff did not mark the server's progress as stale")
	}
	w.take(s)
	w.dispatch(s, created(e.id, false, 30))
	s.queue = append(s.queue, streamOp{progress: true})
	if reqs := w.take(s); len(reqs) != 0 {
		t.Fatalf("requests = %v, want no progress request to such a server", reqs)
	}
	w.dispatch(s, progressAt(40))
	if e.from != 10 {
		t.Fatalf("from = %d after an out-of-order notification, want 10", e.from)
	}
}

func TestStockClient(t *testing.T) {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !stockClient(c) {
		t.Fatal("a client from clientv3.New is not taken for a stock one")
	}
	c.Watcher = namespace.NewWatcher(c.Watcher, "ns/")
	if stockClient(c) {
		t.Fatal("a namespaced Watcher is taken for a stock one")
	}
}
