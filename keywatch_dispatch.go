package microlock

import (
	"fmt"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The responses of the shared stream, and the requests they answer.

// dispatch handles a response. It reports false if the response makes no
// sense for the requests sent, and the stream must start afresh.
func (w *keyWatch) dispatch(s *stream, resp *pb.WatchResponse) bool {
	var (
		lost    *hold
		check   *watchEntry
		refused *stream
	)
	w.mu.Lock()
	if w.s != s {
		w.mu.Unlock()
		return false
	}
	s.heard, s.waiting = time.Now(), time.Time{}
	switch {
	case resp.Created:
		var ok bool
		if check, ok = w.createdLocked(s, resp); !ok {
			w.mu.Unlock()
			return false
		}
		if check != nil {
			refused = s
		}
	case resp.WatchId == clientv3.InvalidWatchID:
		if isProgressNotify(resp) {
			w.progressLocked(s, resp.Header.Revision)
		}
	default:
		lost, check = w.eventsLocked(s, resp)
	}
	if check != nil {
		check.checking = true
		check.refusals++
		w.wg.Add(1)
	}
	w.mu.Unlock()
	if check != nil {
		go w.recheck(check, cancelReason(resp), refused)
	}
	if lost != nil {
		lost.lostKey()
	}
	return true
}

// createdLocked handles the answer to the oldest create request of s. It
// returns the watch that etcd refused, to be checked, if any; ok is false
// if there was no such request, or the answer names another watch. w.mu is
// held.
func (w *keyWatch) createdLocked(s *stream, resp *pb.WatchResponse) (refused *watchEntry, ok bool) {
	if len(s.creates) == 0 {
		return nil, false
	}
	pc := s.creates[0]
	s.creates = s.creates[1:]
	if resp.WatchId != clientv3.InvalidWatchID && resp.WatchId != pc.id {
		return nil, false
	}
	s.sniffing = false
	e := pc.e
	if e == nil || s.byID[pc.id] != e {
		return nil, true // a probe, or a watch removed since
	}
	if !resp.Canceled {
		e.acked, e.refusals = true, 0
		return nil, true
	}
	// Refused: etcd keeps no watch under that ID.
	delete(s.byID, pc.id)
	e.id = 0
	return e, true
}

// eventsLocked handles events or a cancel for one watch of s. It returns
// the hold whose key was deleted, or the watch that etcd dropped, to be
// checked. w.mu is held.
func (w *keyWatch) eventsLocked(s *stream, resp *pb.WatchResponse) (lost *hold, dropped *watchEntry) {
	e := s.byID[resp.WatchId]
	if e == nil {
		return nil, nil // a probe, or a watch cancelled since
	}
	for _, ev := range resp.Events {
		if ev.Type == mvccpb.DELETE {
			lost = e.h
		}
	}
	if lost != nil || !resp.Canceled {
		return lost, nil
	}
	// Dropped by etcd (compacted). Cancel it too: etcd keeps its ID taken,
	// and no progress request of the stream is answered while it lingers.
	delete(s.byID, resp.WatchId)
	e.id = 0
	s.queue = append(s.queue, streamOp{cancel: resp.WatchId})
	w.kickLocked()
	return nil, e
}

// progressLocked moves on the watches that a progress notification at rev
// covers: those whose create was sent before the progress request it
// answers and confirmed before it arrived. Everything up to rev was
// delivered to them, so they resume from rev.
func (w *keyWatch) progressLocked(s *stream, rev int64) {
	if s.sniffing {
		w.staleProgress = true
		return
	}
	if len(s.progress) == 0 || w.staleProgress {
		return
	}
	p := s.progress[0]
	s.progress = s.progress[1:]
	for _, e := range s.byID {
		if e.acked && e.seq < p && rev > e.from {
			e.from = rev
		}
	}
}

// createRequest watches key for deletions from revision from (0: from now
// on). A watch of a hold's key starts at the key's own revision at the
// earliest, never in the future: etcd answers no progress request while a
// watch of the stream starts after its current revision.
func createRequest(id int64, key string, from int64) *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{
		Key:           []byte(key),
		StartRevision: from,
		Filters:       []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT},
		WatchId:       id,
	}}}
}

func cancelRequest(id int64) *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{
		CancelRequest: &pb.WatchCancelRequest{WatchId: id}}}
}

func progressRequest() *pb.WatchRequest {
	return &pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{
		ProgressRequest: &pb.WatchProgressRequest{}}}
}

func isProgressNotify(resp *pb.WatchResponse) bool {
	return len(resp.Events) == 0 && !resp.Canceled && !resp.Created && resp.CompactRevision == 0 &&
		resp.Header != nil && resp.Header.Revision != 0
}

// cancelReason says why etcd refused or cancelled a watch.
func cancelReason(resp *pb.WatchResponse) string {
	switch {
	case resp.CompactRevision != 0:
		return fmt.Sprintf("its revision was compacted (at %d)", resp.CompactRevision)
	case resp.CancelReason != "":
		return resp.CancelReason
	}
	return "cancelled by etcd"
}
