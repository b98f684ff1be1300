package chaos_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/microlock/microlock/internal/chaos"
)

// admissionHistory builds runs of the admission variants: lock keys named
// by their rule, as microlock names them, and guarded writes of the counter.
type admissionHistory struct {
	*history
	keys map[*chaos.Record]string
}

func newAdmissionHistory(v chaos.Variant) *admissionHistory {
	return &admissionHistory{newHistory(v), make(map[*chaos.Record]string)}
}

// grant queues a key of rule for node's seq-th call, and grants it at time
// at (in ms).
func (h *admissionHistory) grant(node string, seq int64, rule string, at int64) *chaos.Record {
	tag := map[string]string{chaos.RulePermit: "~p3:", chaos.RuleShared: "~s:", chaos.RuleExclusive: ""}[rule]
	h.rev++
	key := fmt.Sprintf("%s%s%s_%d", tPrefix, tag, node, seq)
	h.run.History = append(h.run.History, chaos.Event{Rev: h.rev, Key: key, CreateRev: h.rev})
	r := &chaos.Record{Node: node, Seq: seq, Call: ms(at), Acq: ms(at), Token: h.rev, FnStart: ms(at), Rule: rule}
	h.records = append(h.records, r)
	h.keys[r] = key
	return r
}

// mark lands r's guarded write at time at.
func (h *admissionHistory) mark(r *chaos.Record, at int64) {
	h.rev++
	v, _ := json.Marshal(chaos.Value{N: r.Seq, Node: r.Node, Seq: r.Seq, Token: r.Token})
	h.run.History = append(h.run.History, chaos.Event{Rev: h.rev, Key: tCounter, CreateRev: 1, Value: string(v)})
	r.WriteStart, r.WriteEnd, r.Write, r.WriteRev = ms(at), ms(at+1), chaos.WriteOK, h.rev
}

// end has r's fn return at time at, and deletes its key.
func (h *admissionHistory) end(r *chaos.Record, at int64) {
	r.FnEnd, r.End = ms(at), ms(at+1)
	h.rev++
	h.run.History = append(h.run.History, chaos.Event{Rev: h.rev, Key: h.keys[r], Delete: true})
}

// TestCheckSemaphoreClean: three permits at once, a fourth after one left:
// no violation.
func TestCheckSemaphoreClean(t *testing.T) {
	h := newAdmissionHistory(chaos.Semaphore)
	a := h.grant("w1", 1, chaos.RulePermit, 100)
	b := h.grant("w2", 1, chaos.RulePermit, 101)
	c := h.grant("w3", 1, chaos.RulePermit, 102)
	for _, r := range []*chaos.Record{a, b, c} {
		h.mark(r, 110)
	}
	h.end(a, 120)
	d := h.grant("w4", 1, chaos.RulePermit, 121)
	h.mark(d, 125)
	for _, r := range []*chaos.Record{b, c, d} {
		h.end(r, 130)
	}
	res := h.check()
	expect(t, res, nil)
	if res.Landed != 4 || res.Acked != 4 {
		t.Errorf("landed %d, acked %d; want 4 and 4", res.Landed, res.Acked)
	}
}

// TestCheckSemaphoreOverLimit: a fourth permit granted while three still
// work, and its write behind three live older permits, are both found;
// the overlap is allowed when one of the three was caught paused.
func TestCheckSemaphoreOverLimit(t *testing.T) {
	for _, paused := range []bool{false, true} {
		t.Run(fmt.Sprint("paused=", paused), func(t *testing.T) {
			h := newAdmissionHistory(chaos.Semaphore)
			a := h.grant("w1", 1, chaos.RulePermit, 100)
			b := h.grant("w2", 1, chaos.RulePermit, 101)
			c := h.grant("w3", 1, chaos.RulePermit, 102)
			d := h.grant("w4", 1, chaos.RulePermit, 103) // too early: a, b and c hold
			h.mark(d, 105)
			if paused {
				h.run.Faults = append(h.run.Faults, chaos.Fault{Kind: chaos.WorkerPause, Target: "w1", Start: ms(99), Heal: ms(2000), Holding: true, Token: a.Token})
			}
			for _, r := range []*chaos.Record{a, b, c, d} {
				h.end(r, 130)
			}
			e := h.grant("w5", 1, chaos.RulePermit, 2100) // after the pause healed
			h.mark(e, 2101)
			h.end(e, 2102)
			// The write is forbidden either way: etcd's history says its
			// key was not admitted, whatever the clocks say.
			want := map[string]int64{chaos.CheckOverLimit + "/false": 2}
			if paused {
				want = map[string]int64{chaos.CheckOverLimit + "/false": 1, chaos.CheckOverLimit + "/true": 1}
			}
			expect(t, h.check(), want)
		})
	}
}

// TestCheckSharedExclusive: shared holds together are fine; an exclusive
// hold granted while a shared one works, and a shared write behind a live
// older exclusive key, are found.
func TestCheckSharedExclusive(t *testing.T) {
	h := newAdmissionHistory(chaos.SharedLock)
	r1 := h.grant("w1", 1, chaos.RuleShared, 100)
	r2 := h.grant("w2", 1, chaos.RuleShared, 101)
	h.mark(r1, 105)
	h.mark(r2, 106)
	h.end(r1, 110)
	h.end(r2, 111)
	expect(t, h.check(), nil)

	x := h.grant("w3", 3, chaos.RuleExclusive, 200)
	r3 := h.grant("w1", 2, chaos.RuleShared, 201) // too early: x holds
	h.mark(x, 205)
	h.mark(r3, 206)
	h.end(x, 210)
	h.end(r3, 211)
	expect(t, h.check(), map[string]int64{chaos.CheckSharedExcl + "/false": 2})
}

// TestCheckAdmissionWriteOutsideHold: a guarded write that landed after its
// writer's key was deleted is a write by a non-holder, forbidden.
func TestCheckAdmissionWriteOutsideHold(t *testing.T) {
	h := newAdmissionHistory(chaos.Semaphore)
	a := h.grant("w1", 1, chaos.RulePermit, 100)
	h.end(a, 105)
	h.mark(a, 106)
	a.FnEnd = ms(107) // the write went out while fn still ran
	expect(t, h.check(), map[string]int64{chaos.CheckNonHolder + "/false": 1})
}

// TestCheckPausedBeforeLockReturned: a worker stopped just after etcd
// admitted its key, before its Lock returned, records its acquisition on
// waking, after the next holder took over; the overlap is the paused
// holder's, whichever side of it the paused worker's records put it on. The
// nemesis saw its token hold in etcd before and after it stopped it (the
// fault's token). A pause of the worker while it held another token
// excuses nothing.
func TestCheckPausedBeforeLockReturned(t *testing.T) {
	for _, caught := range []bool{true, false} {
		t.Run(fmt.Sprint("caught=", caught), func(t *testing.T) {
			h := newAdmissionHistory(chaos.SharedLock)
			x := h.grant("w5", 1, chaos.RuleExclusive, 100)
			token := x.Token
			if !caught {
				token += 1000
			}
			h.run.Faults = append(h.run.Faults, chaos.Fault{Kind: chaos.WorkerPause, Target: "w5", Start: ms(101), Heal: ms(2000), Holding: true, Token: token})
			h.end(x, 1900) // its lease expired while it stood still
			y := h.grant("w3", 1, chaos.RuleExclusive, 1950)
			h.mark(y, 1960)
			// On waking: Lock returns, and the loss signal follows.
			x.Acq, x.FnStart, x.Lost, x.FnEnd, x.End = ms(2001), ms(2001), ms(2002), ms(2003), ms(2004)
			h.end(y, 2010)
			want := map[string]int64{chaos.CheckSharedExcl + "/true": 1}
			if !caught {
				want = map[string]int64{chaos.CheckSharedExcl + "/false": 1}
			}
			expect(t, h.check(), want)
		})
	}
}
