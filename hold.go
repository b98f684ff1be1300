package microlock

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
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
	// uncertain is set when a write of the key timed out and was retried:
	// that write may still land, even after the hold ended and its key was
	// deleted. Once the hold ends its key is then a suspect of the lease.
	uncertain atomic.Bool

	ctx    context.Context // cancelled, with the reason, when the hold ends
	cancel context.CancelCauseFunc

	mu         sync.Mutex
	links      []context.CancelCauseFunc // contexts that end with the hold; nil once it ended
	linkBuf    [2]context.CancelCauseFunc
	watchTimer *time.Timer
	watched    bool // the lease's keyWatch was given the key; read after watchers.Wait

	watchers   sync.WaitGroup // watchTimer's callback
	finishOnce sync.Once
	gone       atomic.Bool // the key is known to be deleted (or never written)

	emitMu    sync.Mutex // held while a hook runs for this hold
	final     bool       // Released or Lost was delivered
	announced bool       // Acquired was delivered
	early     *Event     // a final event that came before Acquired

	// For the events' Held, taken only when the Mutex has a hook: when the
	// hold was taken (set before the hold is shared) and when it ended
	// (under mu, by the first end).
	heldAt  time.Time
	endedAt time.Time

	// Events raised on goroutines that other holds depend on (the lease's
	// renewal loop, its deadline timer, its key watch) wait here for a
	// goroutine of this hold's own, so that a slow hook delays only its own
	// Mutex's events. Guarded by queueMu.
	queueMu  sync.Mutex
	queue    []Event
	draining bool
}

// newHold starts a hold of m on l, which the caller holds a reference to.
// It fails if l has ended.
func newHold(m *Mutex, l *lease) (*hold, error) {
	h := &hold{m: m, lease: l}
	h.ctx, h.cancel = context.WithCancelCause(context.Background())
	h.links = h.linkBuf[:0]
	if err := l.attach(h); err != nil {
		return nil, err
	}
	return h, nil
}

// link makes cancel run, with the hold's end cause, when the hold ends (at
// once if it already has). unlink with the returned index undoes it.
func (h *hold) link(cancel context.CancelCauseFunc) int {
	h.mu.Lock()
	if h.ctx.Err() != nil {
		h.mu.Unlock()
		cancel(context.Cause(h.ctx))
		return -1
	}
	i := len(h.links)
	h.links = append(h.links, cancel)
	h.mu.Unlock()
	return i
}

// unlink undoes link(cancel) = i.
func (h *hold) unlink(i int) {
	h.mu.Lock()
	if i >= 0 && i < len(h.links) {
		h.links[i] = nil
	}
	h.mu.Unlock()
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
	if h.m.opts.hook != nil {
		h.endedAt = time.Now()
	}
	links := h.links
	h.links = nil
	h.mu.Unlock()
	for _, cancel := range links {
		if cancel != nil {
			cancel(cause)
		}
	}
	return true
}

// lose ends the hold as lost.
func (h *hold) lose(code LossReason, reason string, err error) bool {
	return h.end(&lostError{key: h.m.key, code: code, reason: reason, err: err})
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

// emitLost reports the loss of a held lock, on the calling goroutine: for
// callers that act for this hold's own Mutex (Unlock, say).
func (h *hold) emitLost() {
	if cause := h.lostCause(); cause != nil && h.rev.Load() != 0 {
		h.emit(Event{Type: Lost, Err: cause})
	}
}

// emitLostAsync is emitLost for goroutines that other holds depend on.
func (h *hold) emitLostAsync() {
	if cause := h.lostCause(); cause != nil && h.rev.Load() != 0 {
		h.emitAsync(Event{Type: Lost, Err: cause})
	}
}

// emitAsync delivers ev to the hook on a goroutine of this hold's own, in
// order after the events queued before it, and returns at once. The
// goroutine ends when the queue is empty; the Mutex's Close waits for it.
func (h *hold) emitAsync(ev Event) {
	if h.m.opts.hook == nil {
		return
	}
	h.queueMu.Lock()
	defer h.queueMu.Unlock()
	h.queue = append(h.queue, ev)
	if h.draining || !h.m.hooks.add() {
		return // the running goroutine takes it; or the Mutex is closed
	}
	h.draining = true
	go h.drain()
}

func (h *hold) drain() {
	defer h.m.hooks.done()
	for {
		h.queueMu.Lock()
		if len(h.queue) == 0 {
			h.draining = false
			h.queue = nil
			h.queueMu.Unlock()
			return
		}
		ev := h.queue[0]
		h.queue = h.queue[1:]
		h.queueMu.Unlock()
		h.emit(ev)
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
	final := ev.Type == Released || ev.Type == Lost
	if final {
		ev.Held = h.heldFor()
	}
	if ev.Type == Lost {
		var le *lostError
		if errors.As(ev.Err, &le) {
			ev.Reason = le.code
		}
	}
	ev.Key = h.m.key
	ev.Holder = h.m.opts.nodeID
	ev.Token = h.rev.Load()
	if final && !h.announced {
		// Lost in the instant between taking the lock and reporting it:
		// it follows Acquired, so that every Acquired has its end.
		early := ev // a copy: taking ev's address would put every event on the heap
		h.early = &early
		return
	}
	h.final = final
	hook(ev)
	if ev.Type == Acquired {
		h.announced = true
		if h.early != nil {
			h.final = true
			hook(*h.early)
		}
	}
}

// heldFor is how long the hold lasted, for a final event.
func (h *hold) heldFor() time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.heldAt.IsZero() || h.endedAt.IsZero() {
		return 0
	}
	return h.endedAt.Sub(h.heldAt)
}

// watchLater has the lease's keyWatch watch the hold's key, after
// holdWatchDelay, to notice its deletion (by hand, or by the lease being
// revoked).
func (h *hold) watchLater() {
	h.watchers.Add(1)
	h.mu.Lock()
	h.watchTimer = time.AfterFunc(holdWatchDelay, func() {
		defer h.watchers.Done()
		h.watched = true
		h.lease.watch.add(h)
	})
	h.mu.Unlock()
}

// finish releases what the hold uses once it has ended: its watch (the
// timer's callback waited for), its place on the lease, its key's slot if the
// key is known to be gone, and its lease reference.
func (h *hold) finish() {
	h.finishOnce.Do(func() {
		h.mu.Lock()
		t := h.watchTimer
		h.mu.Unlock()
		if t != nil && t.Stop() {
			h.watchers.Done() // never started
		}
		h.watchers.Wait()
		if h.watched {
			h.lease.watch.remove(h)
		}
		h.lease.leave(h, h.gone.Load())
	})
}

func (h *hold) lostKey() {
	if h.releasing.Load() {
		return
	}
	if h.lose(LossKeyDeleted, "its key was deleted (lease revoked or key removed)", nil) {
		h.lease.detach(h)
		h.emitLostAsync()
	}
}
