package chaos

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// landedWrite is a counter write in etcd's history.
type landedWrite struct {
	rev    int64
	v      Value
	rec    *Record // nil if no record describes it
	parent int     // index of the write whose value it read; -1: the initial 0
	stale  bool    // it landed while its writer did not hold the lock
}

// register walks etcd's history in revision order. The lock's queue is
// replayed alongside, so the holder at every write is known from etcd
// itself, with no clock involved.
func (c *checker) register() {
	ws := c.writes()
	c.lostUpdates(ws)
}

// writes collects the counter's writes and checks each against the lock's
// queue at its revision and against the write before it.
func (c *checker) writes() []landedWrite {
	run := c.run
	queue := make(map[string]int64)  // lock key → create revision
	deleted := make(map[int64]int64) // create revision → revision of its deletion
	holder := func() int64 {
		var min int64
		for _, rev := range queue {
			if min == 0 || rev < min {
				min = rev
			}
		}
		return min
	}
	var ws []landedWrite
	for _, ev := range run.History {
		switch {
		case strings.HasPrefix(ev.Key, run.LockPrefix):
			if ev.Delete {
				deleted[queue[ev.Key]] = ev.Rev
				delete(queue, ev.Key)
			} else if ev.CreateRev == ev.Rev {
				queue[ev.Key] = ev.CreateRev
			}
			continue
		case ev.Key != run.Counter:
			continue
		case ev.Delete:
			c.add(CheckHistory, 0, 1, "", "the counter was deleted at revision %d", ev.Rev)
			continue
		}
		v, err := ParseValue([]byte(ev.Value))
		if err != nil {
			c.add(CheckHistory, 0, 1, "", "revision %d: %v", ev.Rev, err)
			continue
		}
		c.res.Landed++
		rec, t := c.landedRecord(ev.Rev, v)
		h := holder()
		stale := h != v.Token
		if stale {
			rv, why := c.revokedWrite(rec)
			c.addRevoked(CheckNonHolder, t, 1, c.lateWrite(rec), rv, why, "revision %d: %s#%d wrote %d with token %d while the holder's token was %d; its key was deleted at revision %d%s",
				ev.Rev, v.Node, v.Seq, v.N, v.Token, h, deleted[v.Token], writeTiming(rec))
		}
		if n := len(ws); n > 0 && v.Token <= ws[n-1].v.Token {
			prev := ws[n-1].v
			rv, why := c.revokedLate(landedWrite{rec: rec, stale: stale})
			c.addRevoked(CheckTokenOrder, t, 1, c.lateWrite(rec), rv, why, "revision %d: %s#%d wrote with token %d after %s#%d wrote with token %d",
				ev.Rev, v.Node, v.Seq, v.Token, prev.Node, prev.Seq, prev.Token)
		}
		ws = append(ws, landedWrite{rev: ev.Rev, v: v, rec: rec, stale: stale})
	}
	return ws
}

// landedRecord returns the record of the write v that landed at revision
// rev, and when it was sent, and checks that they agree.
func (c *checker) landedRecord(rev int64, v Value) (rec *Record, sent int64) {
	rec = c.byID[recordID(v.Node, v.Seq)]
	if rec == nil {
		c.add(CheckHistory, 0, 1, "", "revision %d: write %s#%d (value %d) has no record", rev, v.Node, v.Seq, v.N)
		return nil, 0
	}
	c.landed[rec] = rev
	if rec.Write != WriteOK {
		c.res.LandedUnacked++
	}
	if rec.Write == WriteRefused || rec.Written != v.N || rec.Token != v.Token {
		c.add(CheckHistory, rec.WriteStart, 1, "", "revision %d: write %s#%d landed as %+v, but its record says %s, value %d, token %d",
			rev, v.Node, v.Seq, v, rec.Write, rec.Written, rec.Token)
	}
	return rec, rec.WriteStart
}

// lostUpdates finds the increments that the final value does not contain.
// Each write read the value of the last write at or before its read's
// revision: its parent. The increments that count are the final write and
// its ancestors; every other write was overwritten by a write that did not
// build on it. The overwriting write is blamed, at its time: the first
// later write whose parent is older.
func (c *checker) lostUpdates(ws []landedWrite) {
	c.linkParents(ws)
	if len(ws) == 0 {
		return
	}
	counted := make([]bool, len(ws))
	chain := 0
	for i := len(ws) - 1; i >= 0; i = ws[i].parent {
		counted[i] = true
		chain++
	}
	c.res.Final = ws[len(ws)-1].v.N
	c.res.LostIncrements = int64(len(ws) - chain)
	if c.res.Final != int64(chain) {
		c.add(CheckHistory, 0, 1, "", "the counter ends at %d, but %d writes built it", c.res.Final, chain)
	}
	lost := culprits(ws, counted)
	for k := range ws {
		if victims := lost[k]; len(victims) > 0 {
			slices.Reverse(victims)
			c.blame(ws, k, victims)
		}
	}
}

// linkParents sets each write's parent: the write whose value it read, by
// its record, or else the latest earlier write it could have read. A read
// that etcd's history does not show is a violation.
func (c *checker) linkParents(ws []landedWrite) {
	for i := range ws {
		w := &ws[i]
		w.parent = -2
		if r := w.rec; r != nil && r.ReadOK {
			w.parent = sort.Search(len(ws), func(k int) bool { return ws[k].rev > r.ReadRev }) - 1
			read := int64(0)
			if w.parent >= 0 {
				read = ws[w.parent].v.N
			}
			if read != r.Read || w.parent >= i {
				c.add(CheckHistory, r.WriteStart, 1, "", "%s#%d read %d at revision %d, but etcd's history has %d there",
					r.Node, r.Seq, r.Read, r.ReadRev, read)
			}
		}
		if w.parent == -2 || w.parent >= i {
			// No record to go by: the latest earlier write it could have read.
			w.parent = -1
			for k := i - 1; k >= 0; k-- {
				if ws[k].v.N == w.v.N-1 {
					w.parent = k
					break
				}
			}
		}
	}
}

// culprits maps each write that overwrote increments to the writes whose
// increments it overwrote (those not counted), latest first.
func culprits(ws []landedWrite, counted []bool) map[int][]int {
	culprit := make([]int, len(ws)) // culprit[i] overwrote write i's increment
	lost := make(map[int][]int)
	for i := len(ws) - 2; i >= 0; i-- {
		if counted[i] {
			continue
		}
		if ws[i+1].parent != i {
			culprit[i] = i + 1
		} else {
			culprit[i] = culprit[i+1]
		}
		lost[culprit[i]] = append(lost[culprit[i]], i)
	}
	return lost
}

// blame records the lost update of write k, which overwrote the increments
// of victims, with the excuse of a late write if one qualifies.
func (c *checker) blame(ws []landedWrite, k int, victims []int) {
	var names []string
	for _, i := range victims {
		if r := ws[i].rec; r != nil && r.Write == WriteOK {
			c.res.LostAcked++
		}
		if len(names) < 6 {
			names = append(names, fmt.Sprintf("%s#%d", ws[i].v.Node, ws[i].v.Seq))
		}
	}
	if len(victims) > len(names) {
		names = append(names, fmt.Sprintf("and %d more", len(victims)-len(names)))
	}
	w := ws[k]
	var t, readRev int64
	if w.rec != nil {
		t, readRev = w.rec.WriteStart, w.rec.ReadRev
	}
	// A late write is to blame whether it overwrote the others or
	// landed between an honest holder's read and write.
	excuse := c.lateWrite(w.rec)
	for _, i := range victims {
		if excuse == "" {
			excuse = c.lateWrite(ws[i].rec)
		}
	}
	// Likewise for a late write after etcd revoked its writer's
	// renewed lease; why is the culprit's, if none qualifies.
	rv, why := c.revokedLate(w)
	for _, i := range victims {
		if rv == nil {
			rv, _ = c.revokedLate(ws[i])
		}
	}
	c.addRevoked(CheckLostUpdate, t, int64(len(victims)), excuse, rv, why, "revision %d: %s#%d (token %d) wrote %d, having read %d at revision %d, over %d: the increments of %s are lost%s",
		w.rev, w.v.Node, w.v.Seq, w.v.Token, w.v.N, w.v.N-1, readRev, ws[k-1].v.N, strings.Join(names, ", "), writeTiming(w.rec))
}

// writeTiming describes when a write was sent relative to its hold's loss
// signal, and which member served it: the evidence for a late write.
func writeTiming(r *Record) string {
	if r == nil {
		return ""
	}
	s := ""
	if r.Lost != 0 {
		d := time.Duration(r.WriteStart - r.Lost)
		if d >= 0 {
			s = fmt.Sprintf("; sent %v after its loss signal", d)
		} else {
			s = fmt.Sprintf("; sent %v before its loss signal", -d)
		}
	}
	if r.WriteVia != "" {
		s += ", through " + r.WriteVia
	}
	return s + fmt.Sprintf(", answered after %v (%s)", time.Duration(r.WriteEnd-r.WriteStart), r.Write)
}

// revokedLate returns the revocation that explains w, if it is a write that
// landed while its writer did not hold the lock (see revokedWrite).
func (c *checker) revokedLate(w landedWrite) (*Revocation, string) {
	if !w.stale {
		return nil, ""
	}
	return c.revokedWrite(w.rec)
}
