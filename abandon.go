package microlock

import (
	"context"
	"time"
)

// abandonTimeout bounds the deletion of a queued key when an acquisition
// gives up; if it fails, the key is deleted in the background.
const abandonTimeout = 2 * time.Second

// keyState says what an abandoned attempt may have left in etcd.
type keyState int

const (
	keyAbsent  keyState = iota // nothing was written
	keyPresent                 // our key is there
	keyMaybe                   // a write's outcome is unknown
	keyRefused                 // etcd refused the write for good (permission, size)
)

// keyUnknown classifies the failure of a write: a permanent etcd error was
// not applied; anything else (a timeout, a cancel, a lost connection) may
// have been.
func keyUnknown(ctx context.Context, err error) keyState {
	if ctx.Err() == nil && !transient(err) {
		return keyRefused
	}
	return keyMaybe
}

// abandon gives up an attempt and cleans up after it. A key that is or may
// be there is deleted now, or failing that by the renewal loop. A lease
// whose keys we cannot account for is retired, so that they go with it; so is
// one refused by etcd, so that a lease granted for nothing does not linger.
func (m *Mutex) abandon(h *hold, state keyState) {
	h.end(errReleased)
	switch state {
	case keyAbsent:
		h.gone.Store(true)
	case keyRefused:
		h.gone.Store(true)
		h.lease.retire()
	case keyPresent, keyMaybe:
		if h.uncertain.Load() {
			state = keyMaybe
		}
		ctx, cancel := context.WithTimeout(context.Background(), abandonTimeout)
		err := m.deleteAbandoned(ctx, h)
		cancel()
		switch {
		case state == keyMaybe:
			// The write may still land, after this delete: the key is
			// deleted again after every renewal, and its slot never freed.
			h.lease.suspect(h)
		case err != nil:
			h.lease.orphan(h, 0)
		default:
			h.gone.Store(true)
		}
		if err != nil || state == keyMaybe {
			h.lease.retire()
		}
	}
	h.finish()
}

// deleteAbandoned deletes the key of an attempt given up, in attempts as
// release does: a key that could not be deleted at once blocks the lock for
// everyone, this process's next attempt included, until the background
// deletion or the lease's revoke reaches etcd.
func (m *Mutex) deleteAbandoned(ctx context.Context, h *hold) error {
	r := &retrier{m: m, what: "cleaning up"}
	return r.attempts(ctx, h.lease.ttl, func(actx context.Context) error {
		_, err := m.client.Delete(actx, h.key)
		return err
	}, nil)
}
