package main

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/chaos"
)

// keyCheckTimeout bounds the read of the term's own key at its start.
const keyCheckTimeout = 2 * time.Second

// lead is the leader variant: one microlock.Lead for the whole run. Each
// term reads its own key (did it start with one?), increments the counter
// as the fenced variant does, then leads until its context ends or the
// term's time is up (see leadOn), and resigns. Every term, and the campaign
// that led to it, is one Record, passed to out when the term ends; out
// also gets a last Record, without a term, when ctx ends.
func (w *worker) lead(ctx context.Context, out func(chaos.Record)) error {
	var acq, token atomic.Int64
	var renewMu sync.Mutex
	renewed := make(map[int64][]int64) // token → its Renewed events
	hook := func(ev microlock.Event) {
		switch ev.Type {
		case microlock.Acquired:
			acq.Store(chaos.Now())
			token.Store(ev.Token)
		case microlock.Renewed:
			renewMu.Lock()
			renewed[ev.Token] = append(renewed[ev.Token], chaos.Now())
			renewMu.Unlock()
		}
	}
	seq := int64(1)
	call := chaos.Now()
	err := microlock.Lead(ctx, w.cli, w.key, func(fctx context.Context) error {
		rec := chaos.Record{Node: w.node, Seq: seq, Call: call, Acq: acq.Load(), Token: token.Load()}
		var lostCtx atomic.Int64
		var lostByWrite int64
		noted := make(chan struct{})
		stop := context.AfterFunc(fctx, func() {
			defer close(noted)
			if errors.Is(context.Cause(fctx), microlock.ErrLockLost) {
				lostCtx.Store(chaos.Now())
			}
		})
		defer func() {
			if !stop() {
				<-noted
			}
			rec.FnEnd = chaos.Now()
			rec.End = rec.FnEnd
			rec.Lost = lostCtx.Load()
			if lostByWrite != 0 && (rec.Lost == 0 || lostByWrite < rec.Lost) {
				rec.Lost = lostByWrite
			}
			renewMu.Lock()
			rec.Renewed = renewed[rec.Token]
			delete(renewed, rec.Token)
			renewMu.Unlock()
			out(rec)
			seq++
			call = chaos.Now() // Lead campaigns again once fn has returned
		}()
		w.checkKey(fctx, &rec)
		if err := w.increment(fctx, &rec, &lostByWrite); err != nil && fctx.Err() == nil {
			return nil // an etcd error: end the term, campaign again
		}
		w.leadOn(fctx)
		return nil
	}, microlock.WithTTL(w.ttl), microlock.WithNodeID(w.node), microlock.OnEvent(hook))
	out(chaos.Record{Node: w.node, Seq: seq, Call: call, End: chaos.Now(), Err: errString(err)})
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// leadOn leads for one TTL, then ends the term only once etcd confirmed,
// through the fence, that the term is still on: a leader cut off from etcd
// cannot step down on its own, and leads until its loss signal comes, as a
// real one would.
func (w *worker) leadOn(fctx context.Context) {
	t := time.NewTimer(w.ttl)
	defer t.Stop()
	select {
	case <-t.C:
	case <-fctx.Done():
		return
	}
	m, ok := microlock.FromContext(fctx)
	if !ok {
		return
	}
	for fctx.Err() == nil {
		actx, cancel := context.WithTimeout(fctx, w.ttl/4)
		resp, err := w.cli.Txn(actx).If(m.IsOwner()).Commit()
		cancel()
		switch {
		case err != nil:
			pause(fctx, 50*time.Millisecond) // a refused connection fails at once
			continue
		case resp.Succeeded:
			return
		}
		// The key is gone: the key watch tells the hold soon.
		t.Reset(2 * w.ttl)
		select {
		case <-t.C:
		case <-fctx.Done():
		}
		return
	}
}

// checkKey reads, at the start of the term, whether the term's own key is
// still there: a Txn guarded by IsOwner, sent whatever fctx says.
func (w *worker) checkKey(fctx context.Context, rec *chaos.Record) {
	m, ok := microlock.FromContext(fctx)
	if !ok {
		rec.KeyCheck = chaos.KeyUnknown
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(fctx), keyCheckTimeout)
	defer cancel()
	resp, err := w.cli.Txn(ctx).If(m.IsOwner()).Commit()
	rec.KeyChecked = chaos.Now()
	switch {
	case err != nil:
		rec.KeyCheck = chaos.KeyUnknown
	case resp.Succeeded:
		rec.KeyCheck = chaos.KeyHeld
	default:
		rec.KeyCheck = chaos.KeyMissing
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
