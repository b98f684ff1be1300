package microlock

import (
	"context"
	"strconv"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// attach registers h to be told when the lease ends, and gives it the lowest
// key slot of its prefix that is free on l, and so its key. It fails if the
// lease has already ended.
//
// Reusing key names matters: etcd keeps a deleted key in its index until a
// compaction, and every range read of the lock's prefix visits all of them,
// so a fresh name per hold would make a busy lock slower hold after hold.
func (l *lease) attach(h *hold) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return errLeaseEnded
	}
	s := slot{pfx: h.m.pfx}
	for {
		if _, used := l.slots[s]; !used {
			break
		}
		s.n++
	}
	l.slots[s] = struct{}{}
	h.slot = s.n
	// The slot makes the key unique among the live keys of this lease under
	// this prefix; a name is reused only once its key is known to be gone,
	// so the create revision tells holds apart.
	h.key = h.m.pfx + h.m.adm.tag + strconv.FormatInt(int64(l.id), 16) + "_" + strconv.Itoa(s.n)
	l.holds[h] = struct{}{}
	return nil
}

// slot is one key name of a lease under one lock prefix.
type slot struct {
	pfx string
	n   int
}

// leave undoes attach once h has ended and drops the reference h held: the
// lease takes no more notice of h, and its slot is free again if free says
// that its key is known to be gone.
func (l *lease) leave(h *hold, free bool) {
	l.mu.Lock()
	delete(l.holds, h)
	if free {
		delete(l.slots, slot{h.m.pfx, h.slot})
	}
	wake := l.unrefLocked()
	l.mu.Unlock()
	if wake {
		l.poke()
	}
}

func (l *lease) detach(h *hold) {
	l.mu.Lock()
	delete(l.holds, h)
	l.mu.Unlock()
}

// orphan queues h's key for deletion by the renewal loop: its release
// failed, and the lease, kept alive for other holds, would otherwise keep it
// forever. rev is its create revision, or 0 if unknown.
func (l *lease) orphan(h *hold, rev int64) {
	l.mu.Lock()
	if !l.ended {
		l.orphans[h] = rev
	}
	l.mu.Unlock()
	l.poke()
}

// freeSlot returns a slot whose key is known to be gone from etcd. A slot
// whose key's fate is unknown is never reused on this lease.
func (l *lease) freeSlot(pfx string, n int) {
	l.mu.Lock()
	delete(l.slots, slot{pfx, n})
	l.mu.Unlock()
}

// orphanList returns the keys to delete after a renewal: orphans with
// their create revision (0: unknown), and suspects with -1.
func (l *lease) orphanList() map[*hold]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.orphans) == 0 && len(l.suspects) == 0 {
		return nil
	}
	out := make(map[*hold]int64, len(l.orphans)+len(l.suspects))
	for h, rev := range l.orphans {
		out[h] = rev
	}
	for h := range l.suspects {
		out[h] = -1
	}
	return out
}

// suspect has the renewal loop delete h's key after every renewal from now
// on: h's write may land late. The lease takes no new holds (the caller
// retires it), so this lasts only as long as its current holds.
func (l *lease) suspect(h *hold) {
	l.mu.Lock()
	if !l.ended {
		l.suspects[h] = struct{}{}
	}
	l.mu.Unlock()
}

// deleteOrphans deletes keys whose release failed, each guarded by its
// create revision when known, so that nothing else is ever deleted, and the
// keys of suspects, which stay suspects.
func (l *lease) deleteOrphans(ctx context.Context, orphans map[*hold]int64) {
	for h, rev := range orphans {
		var err error
		switch {
		case rev < 0:
			_, _ = l.client.Delete(ctx, h.key)
			continue
		case rev == 0:
			// The key's fate is unknown and its slot is never reused
			// meanwhile: whatever is there is ours.
			_, err = l.client.Delete(ctx, h.key)
		default:
			_, err = l.client.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(h.key), "=", rev)).
				Then(clientv3.OpDelete(h.key)).
				Commit()
		}
		if err == nil {
			l.mu.Lock()
			delete(l.orphans, h)
			l.mu.Unlock()
			l.freeSlot(h.m.pfx, h.slot)
		}
	}
}
