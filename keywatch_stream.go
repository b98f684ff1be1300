package microlock

import (
	"context"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The shared raw Watch stream of a keyWatch. Three goroutines serve one
// stream: a sender, a receiver that dispatches responses, and a watchdog
// (the stream's owner) that probes a quiet stream and replaces one that
// stops answering. Sending has a goroutine of its own because a send can
// block on flow control, and neither dispatch nor the watchdog may wait for
// it.
//
// Facts about etcd's watch server (v3rpc/watch.go, mvcc) this relies on:
//   - It answers the create requests of a stream in order, each with a
//     "created" reply, even when it refuses one. A refusal carries the watch
//     ID -1, or the requested ID (the permission check of 3.4 and 3.5), so
//     replies are matched to creates by order, not by ID.
//   - A watch cancelled for compaction keeps its ID taken until the client
//     cancels it: creating it again with the same ID is refused.
//   - A "created" reply's header revision says nothing about delivery: a
//     watch that starts in the past gets its catch-up events after it. A
//     progress notification answering a progress request (watch ID -1) is
//     sent, in order with events, only when every watch of the stream has
//     delivered everything up to its revision (etcd #15237; before that
//     fix it was answered at once, out of order, which we detect: see
//     stream.sniffing).

// stream is one raw Watch stream and what this side knows of it. Its fields
// are guarded by keyWatch.mu.
type stream struct {
	cancel context.CancelFunc // ends the stream

	queue    []streamOp            // requests to send
	byID     map[int64]*watchEntry // the watches on the stream
	creates  []pendingCreate       // creates sent and not yet answered, in order
	progress []uint64              // progress requests sent and not yet answered, in order
	seq      uint64                // creates and progress requests sent so far
	// sniffing: no create has been answered yet. A progress notification
	// now answers the request sent before any watch existed, which a
	// correct server ignores: this one answers out of order.
	sniffing bool

	heard        time.Time // when the last response arrived
	waiting      time.Time // since when an answer is owed; zero if none
	lastProgress time.Time // when the last progress request was queued
}

type streamOp struct {
	create   *watchEntry
	cancel   int64 // watch ID
	probe    bool  // a create and cancel of a throwaway watch: always answered
	progress bool
}

type pendingCreate struct {
	id int64
	e  *watchEntry // nil for a probe
}

// maxProgress bounds the progress requests awaiting an answer. etcd drops a
// progress request while a watch of the stream is catching up; each answer
// is taken to answer the oldest request still listed, which is safe (the
// older the request, the fewer watches it covers) but lags behind by one
// request per drop.
const maxProgress = 16

// run keeps a stream open while the lease lives, and replaces it when it
// breaks or goes silent.
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
		start := time.Now()
		w.serve()
		// A stream that lived a while, or that the watchdog gave up on after
		// waiting, is replaced at once: the balancer puts the next one on
		// another member. One that failed at once backs off.
		if time.Since(start) >= w.limit {
			pause = 0
		} else {
			pause = min(max(2*pause, 100*time.Millisecond), 2*time.Second)
		}
	}
}

// serve runs one stream until it breaks, goes silent, or is replaced.
func (w *keyWatch) serve() {
	// WithRequireLeader: a member cut off from its cluster ends the stream
	// instead of keeping it silently stale.
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(w.ctx))
	defer cancel()
	ws, err := pb.NewWatchClient(w.client.ActiveConnection()).Watch(ctx)
	if err != nil {
		return
	}
	now := time.Now()
	s := &stream{cancel: cancel, byID: make(map[int64]*watchEntry), sniffing: true, heard: now, lastProgress: now}
	w.mu.Lock()
	w.s = s
	for _, e := range w.watches {
		e.id, e.acked = 0, false
		if !e.checking {
			s.queue = append(s.queue, streamOp{create: e})
		}
	}
	w.kickLocked()
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		if w.s == s {
			w.s = nil
		}
		w.mu.Unlock()
	}()

	var g sync.WaitGroup
	g.Add(2)
	go func() {
		defer g.Done()
		defer cancel()
		w.send(ctx, ws, s)
	}()
	go func() {
		defer g.Done()
		defer cancel()
		for {
			resp, err := ws.Recv()
			if err != nil || !w.dispatch(s, resp) {
				return
			}
		}
	}()
	w.watchdog(ctx, s)
	cancel()
	g.Wait()
}

// send sends the stream's requests as they are queued.
func (w *keyWatch) send(ctx context.Context, ws pb.Watch_WatchClient, s *stream) {
	// The sniff: sent before any create, so that no correct server answers.
	if ws.Send(progressRequest()) != nil {
		return
	}
	for {
		reqs := w.take(s)
		if len(reqs) == 0 {
			select {
			case <-w.kick:
				continue
			case <-ctx.Done():
				return
			}
		}
		for _, req := range reqs {
			if ws.Send(req) != nil {
				return
			}
		}
	}
}

// take turns the queued operations into requests, and records what their
// answers will mean, in the order they will be sent.
func (w *keyWatch) take(s *stream) []*pb.WatchRequest {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.s != s {
		return nil
	}
	ops := s.queue
	s.queue = nil
	var reqs []*pb.WatchRequest
	for _, op := range ops {
		switch {
		case op.create != nil:
			e := op.create
			if w.watches[e.h] != e || e.checking || e.id != 0 {
				continue // removed, being rechecked, or already created
			}
			w.nextID++
			e.id, e.acked = w.nextID, false
			s.seq++
			e.seq = s.seq
			s.byID[e.id] = e
			s.creates = append(s.creates, pendingCreate{id: e.id, e: e})
			reqs = append(reqs, createRequest(e.id, e.h.key, e.from))
			if s.waiting.IsZero() {
				s.waiting = time.Now()
			}
		case op.probe:
			var key string
			for _, e := range s.byID {
				key = e.h.key // a key we may read, so that it is not refused
				break
			}
			if key == "" {
				continue
			}
			w.nextID++
			s.creates = append(s.creates, pendingCreate{id: w.nextID})
			reqs = append(reqs, createRequest(w.nextID, key, 0), cancelRequest(w.nextID))
		case op.progress:
			if s.sniffing || w.staleProgress || len(s.progress) >= maxProgress {
				continue
			}
			s.seq++
			s.progress = append(s.progress, s.seq)
			reqs = append(reqs, progressRequest())
		default:
			reqs = append(reqs, cancelRequest(op.cancel))
		}
	}
	return reqs
}

// watchdog probes the stream when it has been quiet for the attempt
// timeout, asks for progress as often, and ends the stream when an answer
// is owed for longer than the attempt timeout: its member is paused, cut
// off, or overloaded. A stream on a healthy member takes its place.
func (w *keyWatch) watchdog(ctx context.Context, s *stream) {
	t := time.NewTimer(w.limit)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next, dead := w.tick(s)
		if dead {
			s.cancel()
			return
		}
		t.Reset(next)
	}
}

// tick is one round of the watchdog: it reports when the next is due, or
// that the stream is dead.
func (w *keyWatch) tick(s *stream) (next time.Duration, dead bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	if !s.waiting.IsZero() {
		waited := now.Sub(s.waiting)
		return w.limit - waited, waited >= w.limit
	}
	if len(s.byID) == 0 {
		return w.limit, false // nothing to protect
	}
	next = w.limit
	if quiet := now.Sub(s.heard); quiet >= w.limit {
		s.queue = append(s.queue, streamOp{probe: true})
		s.waiting = now
	} else {
		next = w.limit - quiet
	}
	if since := now.Sub(s.lastProgress); since >= w.limit {
		s.queue = append(s.queue, streamOp{progress: true})
		s.lastProgress = now
	} else {
		next = min(next, w.limit-since)
	}
	w.kickLocked()
	return next, false
}

func (w *keyWatch) kickLocked() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// createLocked has e watched on the current stream, if any; a new stream
// watches every key anyway.
func (w *keyWatch) createLocked(e *watchEntry) {
	if s := w.s; s != nil && !e.checking {
		s.queue = append(s.queue, streamOp{create: e})
		w.kickLocked()
	}
}

// dropLocked cancels e's watch on the current stream.
func (w *keyWatch) dropLocked(e *watchEntry) {
	if s := w.s; s != nil && e.id != 0 && s.byID[e.id] == e {
		delete(s.byID, e.id)
		s.queue = append(s.queue, streamOp{cancel: e.id})
		w.kickLocked()
	}
	e.id = 0
}
