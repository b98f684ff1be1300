package microlock

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// EventType says what an Event reports.
type EventType int

const (
	// Locked (Watch): someone holds the key; Holder and Token are set.
	Locked EventType = iota + 1
	// Unlocked (Watch): the key is free.
	Unlocked
	// Acquired (OnEvent): this Mutex took the lock. Waited is how long Lock
	// or TryLock took; Place is the place its Lock took in the queue (0 if
	// it never waited).
	Acquired
	// Released (OnEvent): this Mutex unlocked. Held is how long it held the
	// lock. Err is set if etcd could not be told; the key is then deleted
	// in the background.
	Released
	// Renewed (OnEvent): the lease of this Mutex's hold was refreshed.
	// Latency is the renewal's round trip, Margin the time that was left
	// before the loss deadline when its answer came.
	Renewed
	// Lost (OnEvent): ownership ended without Unlock. Err says why, Reason
	// says it in a form to switch on, Held is how long the lock was held.
	Lost
	// Retrying (OnEvent): a transient etcd error, retried after a pause; Err
	// is the error.
	Retrying
	// Queued (OnEvent): Lock found the lock held and joined the queue; Place
	// is the number of keys that were ahead of it (1: it is next). A Lock
	// reports it at most once, and then ends with Acquired or GaveUp.
	Queued
	// GaveUp (OnEvent): Lock (or WithLock) returned without the lock:
	// NoWait found it held, ctx ended, the place in the queue was lost, the
	// Mutex was closed, or etcd failed for good. Err is what Lock returned,
	// Waited how long it tried, Place its place in the queue if it joined
	// one. TryLock does not report it: a refusal is its answer.
	GaveUp
)

var eventTypeNames = [...]string{
	Locked:   "locked",
	Unlocked: "unlocked",
	Acquired: "acquired",
	Released: "released",
	Renewed:  "renewed",
	Lost:     "lost",
	Retrying: "retrying",
	Queued:   "queued",
	GaveUp:   "gave_up",
}

// String returns the event type's name in lower case: "locked",
// "unlocked", "acquired", "released", "renewed", "lost" or "retrying";
// "EventType(n)" for any other value.
func (t EventType) String() string {
	if t > 0 && int(t) < len(eventTypeNames) {
		return eventTypeNames[t]
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is a change of a lock's state. Key is the key the caller passed.
// For Watch and Holder events Holder and Token describe the holder and
// Waiters counts the keys queued behind it; for OnEvent events they
// describe this Mutex and its hold.
//
// Err is set on OnEvent's Lost (why the hold ended; it wraps ErrLockLost),
// GaveUp (what Lock returned), Retrying (the transient error) and Released
// (when etcd could not be told, and the key goes in the background). Watch
// events never set Err: Watch repairs its own watch errors, and its channel
// closes only when ctx ends.
//
// The durations are what metrics graph: Waited (Acquired, GaveUp), Held
// (Released, Lost), Latency and Margin (Renewed). Each is zero on the other
// types. They cost nothing when no OnEvent hook is set.
type Event struct {
	Type   EventType
	Key    string
	Holder string
	Token  int64
	Err    error

	// Holders is, for Watch and Holder, how many hold the key: 1 for an
	// exclusive lock, up to the limit for a semaphore (WithLimit), any
	// number for a shared lock (Shared); 0 when Unlocked. HeldBy lists
	// them, oldest first; Holder and Token are those of the oldest. OnEvent
	// events leave both unset.
	Holders int
	HeldBy  []Holding

	// Waited is how long Lock or TryLock ran, on Acquired and GaveUp.
	Waited time.Duration
	// Held is how long the lock was held, on Released and Lost.
	Held time.Duration
	// Latency is the round trip of the renewal, on Renewed.
	Latency time.Duration
	// Margin is, on Renewed, how long was left before the hold would have
	// been declared lost when the renewal's answer came: the closer to
	// zero, the closer the lock came to a loss.
	Margin time.Duration
	// Reason says why the hold was lost, on Lost; LossNone otherwise.
	Reason LossReason
	// Place, on Queued, is how many keys were ahead of this Mutex's when
	// it joined the queue (1: only the holder); Acquired and GaveUp carry
	// it too, 0 if that Lock never queued.
	Place int
	// Waiters, on Watch's and Holder's Locked events, is how many keys
	// waited in the queue, not yet admitted, at the revision the event was
	// read at. Watch sends an event per change of holder, not per change
	// of Waiters.
	Waiters int
}

// Holding is one current holder of a key, as Watch and Holder report it.
type Holding struct {
	Holder string // the value of its key: the node ID for microlock's holds
	Token  int64  // the create revision of its key
}

// Watch reports who holds key, whoever takes it: microlock, etcd's
// concurrency.Mutex or etcdctl lock. It reads the current state before it
// returns (an error here means etcd could not be read), then sends it first
// on the channel (Locked with holder and token, or Unlocked), then one event
// per change of holder or of its value. Holds shorter than one etcd watch response may be
// reported together as the last one. Watch survives etcd restarts, lost
// connections and compacted revisions by reading the state again, reporting
// only real changes. For a semaphore or a shared lock, Holders and HeldBy
// say how many hold it and who, and every change of that set is an event;
// the lock is Locked while at least one holds it. A holder that changes its
// value (Proclaim) is reported again, with the same token and the new
// value. The channel is closed after ctx is done: receive until
// then, or the goroutine that feeds it waits.
func Watch(ctx context.Context, client *clientv3.Client, key string) (<-chan Event, error) {
	switch {
	case ctx == nil:
		return nil, errNilContext
	case client == nil:
		return nil, errors.New("microlock: nil etcd client")
	case key == "":
		return nil, errors.New("microlock: empty key")
	}
	if err := ctx.Err(); err != nil {
		// No request on a context that is done: the etcd client would
		// only log its own cancellation.
		return nil, fmt.Errorf("microlock: watching %s: %w", quoteKey(key), err)
	}
	w := &watcher{client: client, key: key, pfx: key + "/"}
	rev, err := w.read(ctx)
	if err != nil {
		return nil, fmt.Errorf("microlock: watching %s: %w", quoteKey(key), err)
	}
	ch := make(chan Event)
	go w.run(ctx, ch, rev)
	return ch, nil
}

type queued struct {
	createRev int64
	value     string
}

type watcher struct {
	client *clientv3.Client
	key    string
	pfx    string
	queue  map[string]queued // every key under the prefix
	sent   *Event            // the last state sent
}

// read loads the whole queue and returns the revision it was read at.
func (w *watcher) read(ctx context.Context) (int64, error) {
	resp, err := w.client.Get(ctx, w.pfx, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	w.queue = make(map[string]queued, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		w.queue[string(kv.Key)] = queued{kv.CreateRevision, string(kv.Value)}
	}
	return resp.Header.Revision, nil
}

// state is who holds the key now: every key of the queue that its rule
// admits (see admission.go), the oldest first.
func (w *watcher) state() Event {
	all := make([]queuedKey, 0, len(w.queue))
	for k, q := range w.queue {
		all = append(all, queuedKey{k, q})
	}
	slices.SortFunc(all, func(a, b queuedKey) int { return cmp.Compare(a.createRev, b.createRev) })
	var held []Holding
	exclusiveAhead, onlyPermits := false, true
	for i, q := range all {
		r := keyRule(w.pfx, []byte(q.key))
		switch {
		case r.shared && !exclusiveAhead,
			r.limit > 1 && onlyPermits && i < r.limit,
			r.exclusive() && i == 0:
			held = append(held, Holding{Holder: q.value, Token: q.createRev})
		}
		exclusiveAhead = exclusiveAhead || !r.shared
		onlyPermits = onlyPermits && r.limit > 1
	}
	if len(held) == 0 {
		return Event{Type: Unlocked, Key: w.key}
	}
	return Event{Type: Locked, Key: w.key, Holder: held[0].Holder, Token: held[0].Token,
		Holders: len(held), HeldBy: held, Waiters: len(all) - len(held)}
}

// sameHold compares holds by token and value: a holder's new value
// (Proclaim) is a change too.
func sameHold(a, b Holding) bool { return a.Token == b.Token && a.Holder == b.Holder }

type queuedKey struct {
	key string
	queued
}

// send sends the current state if it differs from the last one sent. It
// reports false when ctx ended.
func (w *watcher) send(ctx context.Context, ch chan<- Event) bool {
	ev := w.state()
	if w.sent != nil && w.sent.Type == ev.Type && slices.EqualFunc(w.sent.HeldBy, ev.HeldBy, sameHold) {
		return true
	}
	select {
	case ch <- ev:
		w.sent = &ev
		return true
	case <-ctx.Done():
		return false
	}
}

func (w *watcher) run(ctx context.Context, ch chan<- Event, rev int64) {
	defer close(ch)
	pause := time.Duration(0)
	for {
		if !w.send(ctx, ch) {
			return
		}
		if w.follow(ctx, ch, rev) {
			pause = 0
		}
		if ctx.Err() != nil {
			return
		}
		// The watch broke (compaction, no leader, a closed stream): wait a
		// little, then read the state again and follow from there.
		pause = min(max(2*pause, 100*time.Millisecond), 5*time.Second)
		for {
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
			var err error
			if rev, err = w.read(ctx); err == nil {
				break
			}
			pause = min(2*pause, 5*time.Second)
		}
	}
}

// follow applies watch events after rev to the queue, sending each change of
// holder, until the watch breaks or ctx ends. It reports whether any events
// came.
func (w *watcher) follow(ctx context.Context, ch chan<- Event, rev int64) (progress bool) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range w.client.Watch(wctx, w.pfx, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if wr.Err() != nil {
			return progress
		}
		progress = progress || len(wr.Events) > 0
		// Apply one revision at a time, so that each holder is seen.
		for i, ev := range wr.Events {
			k := string(ev.Kv.Key)
			switch ev.Type {
			case mvccpb.PUT:
				w.queue[k] = queued{ev.Kv.CreateRevision, string(ev.Kv.Value)}
			case mvccpb.DELETE:
				delete(w.queue, k)
			}
			if i+1 == len(wr.Events) || wr.Events[i+1].Kv.ModRevision != ev.Kv.ModRevision {
				if !w.send(ctx, ch) {
					return progress
				}
			}
		}
	}
	return progress
}
