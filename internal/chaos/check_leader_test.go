package chaos_test

import (
	"testing"
	"time"

	"github.com/microlock/microlock/internal/chaos"
)

// term is a leader's whole term in the history, its key's value its node.
func (h *history) term(node string, seq, at int64) *chaos.Record {
	r := h.hold(node, seq, at)
	for i := range h.run.History {
		if h.run.History[i].Rev == r.Token {
			h.run.History[i].Value = node
		}
	}
	r.KeyCheck, r.KeyChecked = chaos.KeyHeld, r.Acq+ms(1)
	return r
}

// recampaign notes that node wrote a new queue key at time at.
func recampaign(r *chaos.Record, at int64) {
	r.Ops = append(r.Ops, chaos.Op{Op: chaos.OpPut, Key: tPrefix + r.Node + "-again", Sent: ms(at), Acked: ms(at + 1)})
}

func TestCheckLeaderCleanRun(t *testing.T) {
	h := newHistory(chaos.Leader)
	h.term("w1", 1, 1000)
	h.fault(chaos.WorkerPartition, "w2", 1990, 5000)
	lost := h.term("w2", 1, 2000)
	lost.Lost = lost.FnEnd - ms(1)
	recampaign(lost, 2100)
	h.term("w1", 2, 4000)
	h.term("w2", 2, 6000)
	res := h.check()
	expect(t, res, map[string]int64{})
	if res.Terms != 4 || res.TermsLost != 1 || res.TermsRecampaigned != 1 {
		t.Fatalf("terms / lost / re-campaigned = %d / %d / %d, want 4 / 1 / 1", res.Terms, res.TermsLost, res.TermsRecampaigned)
	}
	if len(res.ToLeader) != 1 || res.ToLeader[0] != time.Duration(ms(4000-1990)) {
		t.Fatalf("fault → next leader = %v, want [%v]", res.ToLeader, time.Duration(ms(4000-1990)))
	}
}

func TestCheckLeaderTermWithoutKey(t *testing.T) {
	t.Run("token of another node's key", func(t *testing.T) {
		h := newHistory(chaos.Leader)
		r := h.term("w1", 1, 1000)
		for i := range h.run.History {
			if h.run.History[i].Rev == r.Token {
				h.run.History[i].Value = "w2" // the key is w2's
			}
		}
		expect(t, h.check(), map[string]int64{chaos.CheckTermNoKey + "/false": 1})
	})
	t.Run("key gone at the start, no loss signal", func(t *testing.T) {
		h := newHistory(chaos.Leader)
		r := h.term("w1", 1, 1000)
		r.KeyCheck = chaos.KeyMissing
		expect(t, h.check(), map[string]int64{chaos.CheckTermNoKey + "/false": 1})
	})
	t.Run("key gone after the loss signal", func(t *testing.T) {
		h := newHistory(chaos.Leader)
		r := h.term("w1", 1, 1000)
		r.KeyCheck = chaos.KeyMissing
		r.Lost = r.KeyChecked - ms(1)
		recampaign(r, 1003)
		expect(t, h.check(), map[string]int64{})
	})
}

func TestCheckLeaderNoRecampaign(t *testing.T) {
	h := newHistory(chaos.Leader)
	r := h.term("w1", 1, 1000)
	r.Lost = r.FnEnd - ms(1)
	h.term("w2", 1, 4000)
	res := h.check()
	expect(t, res, map[string]int64{chaos.CheckRecampaign + "/false": 1})
	if res.TermsLost != 1 || res.TermsRecampaigned != 0 {
		t.Fatalf("lost / re-campaigned = %d / %d, want 1 / 0", res.TermsLost, res.TermsRecampaigned)
	}
}

// TestCheckLeaderPausedLeader: a paused leader hears of its loss only on
// waking, after the next leader took over; fault → next leader ends at the
// takeover.
func TestCheckLeaderPausedLeader(t *testing.T) {
	h := newHistory(chaos.Leader)
	paused := h.term("w1", 1, 1000)
	h.fault(chaos.WorkerPause, "w1", 1500, 5500)
	h.term("w2", 1, 3000)
	paused.FnEnd, paused.End, paused.Lost = ms(5501), ms(5502), ms(5501)
	recampaign(paused, 5510)
	h.term("w3", 1, 7000)
	res := h.check()
	if len(res.ToLeader) != 1 || res.ToLeader[0] != time.Duration(ms(3000-1500)) {
		t.Fatalf("fault → next leader = %v, want [%v]", res.ToLeader, time.Duration(ms(1500)))
	}
}
