package microlock

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// holdWatchDelay is how long a new hold waits before it watches its own key.
// The watch starts from the hold's revision, so a deletion in the meantime is
// still seen; short holds (a WithLock loop) never pay for a watch at all.
const holdWatchDelay = 200 * time.Millisecond

// hold is one acquisition by a Mutex, from the moment its key is written to
// etcd until it is released or lost. Its key is unique to this acquisition:
// two Mutex values, or two attempts of one, never share a hold by accident.
type hold struct {
	m     *Mutex
	lease *lease
	key   string       // etcd key: the lock prefix, the lease ID and a slot
	slot  int          // unique among the lease's live keys under the prefix
	rev   atomic.Int64 // create revision of key (the fencing token) once held
	// releasing is set while Unlock deletes the key: the watch then leaves
	// the verdict on the deletion it sees to the release's own answer.
	releasing atomic.Bool

	ctx    context.Context // cancelled, with the reason, when the hold ends
	cancel context.CancelCauseFunc

	mu         sync.Mutex
	links      map[int]context.CancelCauseFunc // contexts that end with the hold
	nextLink   int
	watchTimer *time.Timer

	watchers   sync.WaitGroup // the own-key watch goroutine
	finishOnce sync.Once
	gone       atomic.Bool // the key is known to be deleted (or never written)

	emitMu sync.Mutex // held while a hook runs for this hold
	final  bool       // Released or Lost was delivered
}

func newHold(m *Mutex, l *lease) *hold {
	slot := l.takeSlot(m.pfx)
	h := &hold{
		m:     m,
		lease: l,
		slot:  slot,
		// The slot makes the key unique among the live keys of this lease
		// under this prefix; a name is reused only once its key is known
		// to be gone, so the create revision tells holds apart.
		key:   m.pfx + strconv.FormatInt(int64(l.id), 16) + "_" + strconv.Itoa(slot),
		links: make(map[int]context.CancelCauseFunc),
	}
	h.ctx, h.cancel = context.WithCancelCause(context.Background())
	return h
}

// link makes cancel run, with the hold's end cause, when the hold ends (at
// once if it already has). The returned func undoes the link.
func (h *hold) link(cancel context.CancelCauseFunc) (unlink func()) {
	h.mu.Lock()
	if h.ctx.Err() != nil {
		h.mu.Unlock()
		cancel(context.Cause(h.ctx))
		return func() {}
	}
	id := h.nextLink
	h.nextLink++
	h.links[id] = cancel
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		delete(h.links, id)
		h.mu.Unlock()
	}
}

// end ends the hold with cause and cancels everything linked to it. Only the
// first call has an effect; it reports whether it was this one.
func (h *hold) end(cause error) bool {
	h.mu.Lock()
	if h.ctx.Err() != nil {
		h.mu.Unlock()
		return false
	}
	h.cancel(cause)
	links := h.links
	h.links = nil
	h.mu.Unlock()
	for _, cancel := range links {
		cancel(cause)
	}
	return true
}

// lose ends the hold as lost.
func (h *hold) lose(reason string, err error) bool {
	return h.end(&lostError{key: h.m.key, reason: reason, err: err})
}

// lostCause returns why the hold was lost, or nil if it is live or was
// released.
func (h *hold) lostCause() error {
	if h.ctx.Err() == nil {
		return nil
	}
	if cause := context.Cause(h.ctx); errors.Is(cause, ErrLockLost) {
		return cause
	}
	return nil
}

// emitLost reports the loss of a held lock.
func (h *hold) emitLost() {
	if cause := h.lostCause(); cause != nil && h.rev.Load() != 0 {
		h.emit(Event{Type: Lost, Err: cause})
	}
}

// emit delivers ev to the Mutex's hook, filled in with this hold's details.
// Hooks of one hold run one at a time, and none after its final event
// (Released or Lost): a Renewed from the shared renewal loop cannot arrive
// after Unlock has returned.
func (h *hold) emit(ev Event) {
	hook := h.m.opts.hook
	if hook == nil {
		return
	}
	h.emitMu.Lock()
	defer h.emitMu.Unlock()
	if h.final {
		return
	}
	h.final = ev.Type == Released || ev.Type == Lost
	ev.Key = h.m.key
	ev.Holder = h.m.opts.nodeID
	ev.Token = h.rev.Load()
	hook(ev)
}

// watchLater starts, after holdWatchDelay, the watch that notices the hold's
// key being deleted (by hand, or by its lease being revoked).
func (h *hold) watchLater() {
	h.watchers.Add(1)
	h.mu.Lock()
	h.watchTimer = time.AfterFunc(holdWatchDelay, func() {
		defer h.watchers.Done()
		h.watch()
	})
	h.mu.Unlock()
}

// finish releases what the hold uses once it has ended: its watch goroutine
// (waited for), its place on the lease, and its lease reference.
func (h *hold) finish() {
	h.finishOnce.Do(func() {
		h.mu.Lock()
		t := h.watchTimer
		h.mu.Unlock()
		if t != nil && t.Stop() {
			h.watchers.Done() // never started
		}
		h.watchers.Wait()
		h.lease.detach(h)
		if h.gone.Load() {
			h.lease.freeSlot(h.m.pfx, h.slot)
		}
		h.lease.unref()
	})
}

// watch runs until the hold ends, and ends it as lost if its key is deleted.
func (h *hold) watch() {
	rev := h.rev.Load()
	from := rev + 1
	client := h.m.client
	pause := time.Duration(0)
	for h.ctx.Err() == nil {
		if pause > 0 {
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-h.ctx.Done():
				t.Stop()
				return
			}
		}
		pause = min(max(2*pause, 100*time.Millisecond), 2*time.Second)
		// WithRequireLeader: a member cut off from its cluster closes the
		// watch instead of keeping it silently stale.
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(h.ctx))
		for wr := range client.Watch(wctx, h.key, clientv3.WithRev(from), clientv3.WithFilterPut()) {
			if err := wr.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					// Events are gone: read the key instead.
					resp, gerr := client.Get(h.ctx, h.key)
					if gerr == nil {
						if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != rev {
							cancel()
							h.lostKey()
							return
						}
						from = resp.Header.Revision + 1
					}
				}
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					cancel()
					h.lostKey()
					return
				}
			}
			pause = 0
			if wr.Header.Revision >= from {
				from = wr.Header.Revision + 1
			}
		}
		cancel()
	}
}

func (h *hold) lostKey() {
	if h.releasing.Load() {
		return
	}
	if h.lose("its key was deleted (lease revoked or key removed)", nil) {
		h.lease.detach(h)
		h.emitLost()
	}
}
