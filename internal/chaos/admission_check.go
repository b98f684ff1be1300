package chaos

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// admission checks an admission variant's run: the writes, against etcd's
// history, and the holds, against each other.
func (c *checker) admission() {
	c.admittedWrites()
	c.overlaps()
}

// queuedKey is a lock key live in the replayed queue.
type queuedKey struct {
	key   string
	rev   int64 // create revision
	rule  string
	limit int
}

// admittedWrites replays the lock's queue alongside the counter's writes:
// each write, guarded by IsOwner, must have landed while its writer's key
// was in the queue and admitted by its rule, by the create revisions of
// the keys before it, with no clock involved.
func (c *checker) admittedWrites() {
	run := c.run
	queue := make(map[string]queuedKey)
	for _, ev := range run.History {
		switch {
		case strings.HasPrefix(ev.Key, run.LockPrefix):
			if ev.Delete {
				delete(queue, ev.Key)
			} else if ev.CreateRev == ev.Rev {
				rule, limit := keyRule(run.LockPrefix, ev.Key)
				queue[ev.Key] = queuedKey{ev.Key, ev.CreateRev, rule, limit}
			}
			continue
		case ev.Key != run.Counter || ev.Delete:
			continue
		}
		v, err := ParseValue([]byte(ev.Value))
		if err != nil {
			c.add(CheckHistory, 0, 1, "", "revision %d: %v", ev.Rev, err)
			continue
		}
		c.res.Landed++
		rec := c.byID[recordID(v.Node, v.Seq)]
		var t int64
		if rec == nil {
			c.add(CheckHistory, 0, 1, "", "revision %d: write %s#%d has no record", ev.Rev, v.Node, v.Seq)
		} else {
			t = rec.WriteStart
			c.landed[rec] = ev.Rev
			if rec.Write != WriteOK {
				c.res.LandedUnacked++
			}
			if rec.Write == WriteRefused || rec.Token != v.Token {
				c.add(CheckHistory, t, 1, "", "revision %d: write %s#%d landed with token %d, but its record says %s, token %d",
					ev.Rev, v.Node, v.Seq, v.Token, rec.Write, rec.Token)
			}
		}
		c.admittedAt(queue, ev.Rev, v, rec, t)
	}
}

// admittedAt checks the write v, landed at rev, against the queue then.
func (c *checker) admittedAt(queue map[string]queuedKey, rev int64, v Value, rec *Record, t int64) {
	var own *queuedKey
	var older []queuedKey
	for _, k := range queue {
		switch {
		case k.rev == v.Token:
			own = &k
		case k.rev < v.Token:
			older = append(older, k)
		}
	}
	if own == nil {
		rv, why := c.revokedWrite(rec)
		c.addRevoked(CheckNonHolder, t, 1, "", rv, why, "revision %d: %s#%d wrote with token %d, whose key was not in the queue",
			rev, v.Node, v.Seq, v.Token)
		return
	}
	var bad []string // the older keys that exclude it
	for _, k := range older {
		blocks := true // an exclusive key's: any
		switch own.rule {
		case RuleShared:
			blocks = k.rule != RuleShared
		case RulePermit:
			blocks = k.rule != RulePermit || k.limit != own.limit
		}
		if blocks {
			bad = append(bad, fmt.Sprintf("%s key %d", k.rule, k.rev))
		}
	}
	check := CheckSharedExcl
	if c.run.Variant == Semaphore {
		check = CheckOverLimit
	}
	switch {
	case len(bad) > 0:
		c.add(check, t, 1, "", "revision %d: %s#%d (%s, token %d) wrote behind %s", rev, v.Node, v.Seq, own.rule, v.Token, strings.Join(bad, ", "))
	case own.rule == RulePermit && len(older) >= own.limit:
		c.add(check, t, 1, "", "revision %d: %s#%d (permit, token %d) wrote behind %d older permits, limit %d",
			rev, v.Node, v.Seq, v.Token, len(older), own.limit)
	}
}

// overlaps checks the holds on the workers' shared clock, from the grant
// to the moment the work stopped (its fn returned or its loss signal
// came): never more than the limit at once, and an exclusive hold never
// with another. A holder paused while it held the lock cannot hear its loss
// signal: an overlap with one is allowed, whether its records put it before
// or after the other holds (a worker stopped before its Lock returned
// records its acquisition on waking).
func (c *checker) overlaps() {
	hs := c.holds()
	slices.SortFunc(hs, func(a, b *Record) int { return cmp.Compare(a.Acq, b.Acq) })
	var active []*Record
	for _, h := range hs {
		active = slices.DeleteFunc(active, func(a *Record) bool { return a.Stop() <= h.Acq })
		excl := h.Rule == RuleExclusive
		for _, a := range active {
			excl = excl || a.Rule == RuleExclusive
		}
		n := len(active) + 1
		over := c.run.Variant == Semaphore && n > SemaphoreLimit
		mixed := c.run.Variant == SharedLock && excl && n > 1
		if over || mixed {
			check := CheckOverLimit
			if mixed {
				check = CheckSharedExcl
			}
			// The paused holder can be h itself: stopped after etcd
			// admitted its key and before its Lock returned, it records
			// its acquisition on waking, after the next holder's.
			excuse, rv, why := c.overlapExcuse(append(slices.Clone(active), h))
			var who []string
			for _, a := range active {
				who = append(who, fmt.Sprintf("%s#%d (%s, token %d)", a.Node, a.Seq, a.Rule, a.Token))
			}
			c.addRevoked(check, h.Acq, 1, excuse, rv, why, "%s#%d (%s, token %d) acquired while %s still worked",
				h.Node, h.Seq, h.Rule, h.Token, strings.Join(who, ", "))
		}
		active = append(active, h)
	}
}

// overlapExcuse returns why an overlap of the holds in active is allowed
// (one of them was caught paused while etcd said it held the lock), or the
// revocation of a renewed lease that explains it.
func (c *checker) overlapExcuse(active []*Record) (excuse string, rv *Revocation, why string) {
	for _, a := range active {
		if e := c.pausedHolder(a); e != "" {
			return e, nil, ""
		}
	}
	for _, a := range active {
		if a.Lost == 0 {
			continue
		}
		if r, w := c.revokedHold(a); r != nil {
			return "", r, ""
		} else if why == "" {
			why = w
		}
	}
	return "", nil, why
}
