package chaos_test

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/microlock/microlock/internal/chaos"
)

// The checker is what makes the suite able to fail, so these tests feed it
// histories with known faults and check that it finds each one, and only
// where it should. Times are in milliseconds.

const (
	tPrefix  = "chaos/register/"
	tCounter = "chaos/counter"
)

// history builds a run: lock keys and counter writes in etcd's revision
// order, and the workers' records.
type history struct {
	rev     int64
	counter int64 // the counter's value after the last write
	run     chaos.Run
	records []*chaos.Record
}

func newHistory(v chaos.Variant) *history {
	return &history{run: chaos.Run{Variant: v, TTL: 2 * time.Second, LockPrefix: tPrefix, Counter: tCounter, End: ms(60000)}}
}

func ms(n int64) int64 { return n * int64(time.Millisecond) }

// acquire queues and grants node's lock key at time at, and returns the
// record of the hold, whose token is the key's create revision.
func (h *history) acquire(node string, seq, at int64) *chaos.Record {
	h.rev++
	h.run.History = append(h.run.History, chaos.Event{Rev: h.rev, Key: fmt.Sprintf("%s%s-%d", tPrefix, node, seq), CreateRev: h.rev})
	r := &chaos.Record{Node: node, Seq: seq, Call: ms(at), Acq: ms(at), Token: h.rev, FnStart: ms(at)}
	h.records = append(h.records, r)
	return r
}

// release deletes the lock key of r (released, or expired with its lease).
func (h *history) release(r *chaos.Record) {
	h.rev++
	h.run.History = append(h.run.History, chaos.Event{Rev: h.rev, Key: fmt.Sprintf("%s%s-%d", tPrefix, r.Node, r.Seq), Delete: true})
}

// read has r read the counter as it is now in the history.
func (h *history) read(r *chaos.Record) {
	r.ReadOK, r.Read, r.ReadRev, r.ReadEnd = true, h.counter, h.rev, r.FnStart+ms(1)
}

// write lands r's increment of what it read at time at, with outcome as
// the worker saw it.
func (h *history) write(r *chaos.Record, at int64, outcome string) {
	h.rev++
	h.counter = r.Read + 1
	v, _ := json.Marshal(chaos.Value{N: r.Read + 1, Node: r.Node, Seq: r.Seq, Token: r.Token})
	h.run.History = append(h.run.History, chaos.Event{Rev: h.rev, Key: tCounter, CreateRev: 1, Value: string(v)})
	r.Written = r.Read + 1
	r.WriteStart, r.WriteEnd, r.Write = ms(at), ms(at+1), outcome
	if outcome == chaos.WriteOK {
		r.WriteRev = h.rev
	}
}

// hold is a whole, undisturbed hold: acquire, read, write, release.
func (h *history) hold(node string, seq, at int64) *chaos.Record {
	r := h.acquire(node, seq, at)
	h.read(r)
	h.write(r, at+2, chaos.WriteOK)
	r.FnEnd, r.End = ms(at+4), ms(at+5)
	h.release(r)
	return r
}

// check runs the checker on the history as built so far.
func (h *history) check() *chaos.Result {
	h.run.Records = nil
	for _, r := range h.records {
		h.run.Records = append(h.run.Records, *r)
	}
	return chaos.Check(&h.run)
}

func (h *history) fault(k chaos.Kind, target string, start, heal int64) {
	h.run.Faults = append(h.run.Faults, chaos.Fault{Kind: k, Target: target, Start: ms(start), Heal: ms(heal)})
}

// violations returns the result's violations as "check/allowed" → count,
// or "check/etcd" for those in chaos.CategoryEtcd.
func violations(res *chaos.Result) map[string]int64 {
	out := make(map[string]int64)
	for _, v := range res.Violations {
		if v.Etcd != nil {
			out[v.Check+"/etcd"] += v.Count
			continue
		}
		out[fmt.Sprintf("%s/%v", v.Check, v.Allowed)] += v.Count
	}
	return out
}

func expect(t *testing.T, res *chaos.Result, want map[string]int64) {
	t.Helper()
	got := violations(res)
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s: %d, want %d", k, got[k], n)
		}
	}
	for k, n := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected %s: %d", k, n)
		}
	}
	if t.Failed() {
		for _, v := range res.Violations {
			t.Logf("%+v", v)
		}
	}
}

func TestCheckCleanRun(t *testing.T) {
	h := newHistory(chaos.Plain)
	h.hold("w1", 1, 100)
	h.hold("w2", 1, 200)
	h.hold("w1", 2, 300)
	// A write whose answer was lost, but which landed: no violation.
	r := h.acquire("w3", 1, 400)
	h.read(r)
	h.write(r, 402, chaos.WriteUnknown)
	r.FnEnd, r.End = ms(404), ms(405)
	h.release(r)
	h.hold("w2", 2, 500)
	h.fault(chaos.FollowerKill, "m1", 1000, 3000)
	h.hold("w1", 3, 3100)

	res := h.check()
	expect(t, res, nil)
	if res.Final != 6 || res.Acked != 5 || res.LandedUnacked != 1 || res.Landed != 6 || res.LostIncrements != 0 {
		t.Errorf("final %d, acked %d, landed %d (%d unacknowledged), lost %d; want 6, 5, 6 (1), 0",
			res.Final, res.Acked, res.Landed, res.LandedUnacked, res.LostIncrements)
	}
	if got := res.ToAcquire[chaos.FollowerKill]; len(got) != 1 || got[0] != 2100*time.Millisecond {
		t.Errorf("fault → next acquisition = %v, want [2.1s]", got)
	}
}

// pausedWriter is the story of a holder paused between its read and its
// write for longer than the TTL: its key expires, another worker takes
// the lock and increments, then the paused worker wakes, hears of its
// loss only now, and its stale write lands.
func pausedWriter(v chaos.Variant, kind chaos.Kind, target string) *chaos.Result {
	h := newHistory(v)
	h.hold("w1", 1, 100)
	paused := h.acquire("w2", 1, 900)
	h.read(paused)
	h.fault(kind, target, 1000, 4000)
	if target == paused.Node {
		h.run.Faults[0].Holding, h.run.Faults[0].Token = true, paused.Token
	}
	h.release(paused) // the lease expires during the pause
	h.hold("w3", 1, 3100)
	h.hold("w1", 2, 3200)
	h.write(paused, 4001, chaos.WriteOK)
	paused.Lost, paused.FnEnd, paused.End = ms(4002), ms(4003), ms(4004)
	h.hold("w3", 2, 4100)
	return h.check()
}

func TestCheckPausedWriter(t *testing.T) {
	t.Run("plain/worker pause", func(t *testing.T) {
		res := (pausedWriter(chaos.Plain, chaos.WorkerPause, "w2"))
		expect(t, res, map[string]int64{
			"lost update/true":                2, // w3#1 and w1#2 are overwritten
			"token order/true":                1,
			"write by non-holder/true":        1,
			"loss signal after takeover/true": 1,
		})
		if res.LostIncrements != 2 || res.LostAcked != 2 || res.Final != 3 || res.Landed != 5 {
			t.Errorf("lost %d (%d acknowledged), final %d, landed %d; want 2 (2), 3, 5", res.LostIncrements, res.LostAcked, res.Final, res.Landed)
		}
		if len(res.Forbidden()) != 0 {
			t.Errorf("forbidden: %+v", res.Forbidden())
		}
	})
	t.Run("fenced/worker pause", func(t *testing.T) {
		// Fencing should have refused the write: that it landed is forbidden.
		expect(t, (pausedWriter(chaos.Fenced, chaos.WorkerPause, "w2")), map[string]int64{
			"lost update/false":               2,
			"token order/false":               1,
			"write by non-holder/false":       1,
			"loss signal after takeover/true": 1,
		})
	})
	t.Run("plain/worker pause of another worker", func(t *testing.T) {
		expect(t, (pausedWriter(chaos.Plain, chaos.WorkerPause, "w3")), map[string]int64{
			"lost update/false":                2,
			"token order/false":                1,
			"write by non-holder/false":        1,
			"loss signal after takeover/false": 1,
		})
	})
	t.Run("plain/member pause", func(t *testing.T) {
		// The same story with no paused worker to blame, and no evidence
		// that the write was held up on its way, is a library bug.
		expect(t, (pausedWriter(chaos.Plain, chaos.MemberPause, "m1")), map[string]int64{
			"lost update/false":                2,
			"token order/false":                1,
			"write by non-holder/false":        1,
			"loss signal after takeover/false": 1,
		})
	})
}

func TestCheckLateLossSignal(t *testing.T) {
	h := newHistory(chaos.Fenced)
	h.fault(chaos.WorkerPartition, "w1", 100, 3500)
	r := h.acquire("w1", 1, 90)
	h.release(r)
	next := h.hold("w2", 1, 2000)
	// w1 heard of its loss 5 ms after w2 acquired.
	r.Lost, r.FnEnd, r.End = next.Acq+ms(5), next.Acq+ms(6), next.Acq+ms(7)
	h.hold("w3", 1, 3600)

	res := h.check()
	expect(t, res, map[string]int64{"loss signal after takeover/false": 1})
	if len(res.Margins) != 0 {
		t.Errorf("margins %v, want none", res.Margins)
	}
}

func TestCheckMargin(t *testing.T) {
	h := newHistory(chaos.Plain)
	h.fault(chaos.WorkerPartition, "w1", 100, 3500)
	r := h.acquire("w1", 1, 90)
	r.Lost, r.FnEnd, r.End = ms(1600), ms(1601), ms(1602)
	h.release(r)
	h.hold("w2", 1, 2000)
	h.hold("w3", 1, 3600)

	res := h.check()
	expect(t, res, nil)
	if len(res.Margins) != 1 || res.Margins[0] != 400*time.Millisecond {
		t.Errorf("margins %v, want [400ms]", res.Margins)
	}
	if got := res.ToLoss[chaos.WorkerPartition]; len(got) != 1 || got[0] != 1500*time.Millisecond {
		t.Errorf("fault → loss signal %v, want [1.5s]", got)
	}
}

func TestCheckMissingAcknowledgedWrite(t *testing.T) {
	h := newHistory(chaos.Fenced)
	h.hold("w1", 1, 100)
	r := h.acquire("w2", 1, 200)
	h.read(r)
	r.Written, r.Write, r.WriteRev = 2, chaos.WriteOK, 99
	r.FnEnd, r.End = ms(204), ms(205)
	h.release(r)
	expect(t, h.check(), map[string]int64{"acknowledged write missing/false": 1})
}

func TestCheckLiveness(t *testing.T) {
	h := newHistory(chaos.Plain)
	h.hold("w1", 1, 100)
	h.fault(chaos.LeaderKill, "m0", 1000, 2000)
	h.hold("w2", 1, 2000+2000+5000+1) // just past TTL + 5 s after the heal
	expect(t, h.check(), map[string]int64{"liveness/false": 1})
}

func TestCheckUnrecordedWrite(t *testing.T) {
	h := newHistory(chaos.Plain)
	r := h.hold("w1", 1, 100)
	r.Seq = 7 // etcd has a write from w1#1, which no record describes
	res := h.check()
	if got := violations(res)["history/false"]; got < 1 {
		t.Errorf("history violations %d, want at least 1", got)
	}
}

// A stale write can itself be overwritten by a write that had read the
// counter before it landed: then only the stale write's increment is lost.
func TestCheckOverwrittenStaleWrite(t *testing.T) {
	h := newHistory(chaos.Plain)
	h.hold("w1", 1, 100)
	stale := h.acquire("w2", 1, 900)
	h.read(stale) // reads 1
	h.fault(chaos.WorkerPause, "w2", 1000, 4000)
	h.run.Faults[0].Holding, h.run.Faults[0].Token = true, stale.Token
	h.release(stale)
	h.hold("w3", 1, 3100)
	h.hold("w1", 2, 3200) // the counter is 3
	next := h.acquire("w3", 2, 4000)
	h.read(next) // reads 3
	h.write(stale, 4001, chaos.WriteOK)
	stale.Lost, stale.FnEnd, stale.End = ms(4002), ms(4003), ms(4004)
	h.write(next, 4005, chaos.WriteOK) // writes 4 over the stale 2
	next.FnEnd, next.End = ms(4006), ms(4007)
	h.release(next)
	h.hold("w1", 3, 4100)

	res := h.check()
	expect(t, res, map[string]int64{
		"lost update/true":                1,
		"token order/true":                1,
		"write by non-holder/true":        1,
		"loss signal after takeover/true": 1,
	})
	if res.Final != 5 || res.Landed != 6 || res.LostIncrements != 1 {
		t.Errorf("final %d, landed %d, lost %d; want 5, 6, 1", res.Final, res.Landed, res.LostIncrements)
	}
}

// A read that returned a value etcd's history does not have at that
// revision is a broken history, whoever is to blame.
func TestCheckImpossibleRead(t *testing.T) {
	h := newHistory(chaos.Fenced)
	h.hold("w1", 1, 100)
	r := h.acquire("w2", 1, 200)
	h.read(r)
	r.Read = 7
	h.write(r, 202, chaos.WriteOK)
	r.FnEnd, r.End = ms(204), ms(205)
	h.release(r)
	res := h.check()
	if got := violations(res)["history/false"]; got < 1 {
		t.Errorf("history violations %d, want at least 1", got)
	}
}

func TestCheckPausePhase(t *testing.T) {
	for _, v := range []chaos.Variant{chaos.Plain, chaos.Fenced} {
		h := newHistory(v)
		h.hold("w1", 1, 100)
		paused := h.acquire("w2", 1, 900)
		h.read(paused)
		h.run.Faults = append(h.run.Faults, chaos.Fault{Kind: chaos.WorkerPause, Target: "w2", Start: ms(905), Heal: ms(4000), Holding: true, Token: paused.Token})
		h.release(paused)
		h.hold("w3", 1, 3100)
		if v == chaos.Plain {
			h.write(paused, 4001, chaos.WriteOK)
		} else {
			paused.Written, paused.Write, paused.WriteStart, paused.WriteEnd = 2, chaos.WriteRefused, ms(4001), ms(4002)
		}
		paused.Lost, paused.FnEnd, paused.End = ms(4001), ms(4003), ms(4004)
		h.hold("w1", 2, 4100)

		res := h.check()
		want := chaos.Pause{Node: "w2", Phase: chaos.PhaseGap, Wrote: true, Landed: v == chaos.Plain, Refused: v == chaos.Fenced}
		if len(res.Pauses) != 1 || res.Pauses[0] != want {
			t.Errorf("%s: pauses %+v, want [%+v]", v, res.Pauses, want)
		}
	}
}

// A write sent while its writer held the lock, during a member pause, can
// be held up in the cluster (in the paused member, or in a proposal
// forwarded to it) and land after the hold ended. The plain variant cannot
// stop it; the fenced one must.
func TestCheckWriteDelayedByPausedMember(t *testing.T) {
	// The member pause lasts from 1000 to 4000 ms. The writer's renewals
	// hang too: its loss signal comes at 2800, and its lease expires.
	story := func(v chaos.Variant, sentAt int64, answered bool) *chaos.Result {
		h := newHistory(v)
		h.hold("w1", 1, 100)
		h.fault(chaos.MemberPause, "m1", 1000, 4000)
		late := h.acquire("w2", 1, sentAt-5)
		h.read(late)
		h.release(late)
		h.hold("w3", 1, 3100)
		h.write(late, sentAt, chaos.WriteUnknown) // applied on resume
		late.Lost, late.FnEnd, late.End = ms(2800), ms(2801), ms(2802)
		late.WriteEnd = late.Lost // cancelled by the loss signal, too late
		if answered {
			late.WriteEnd = ms(sentAt + 1)
		}
		h.hold("w1", 2, 4100)
		return h.check()
	}
	excused := map[string]int64{"lost update/true": 1, "token order/true": 1, "write by non-holder/true": 1}
	forbidden := map[string]int64{"lost update/false": 1, "token order/false": 1, "write by non-holder/false": 1}
	expect(t, story(chaos.Plain, 1105, false), excused)
	// Sent just before the pause began, held up all the same.
	expect(t, story(chaos.Plain, 990, false), excused)
	// Answered at once, yet applied after the hold ended: not held up.
	expect(t, story(chaos.Plain, 1105, true), forbidden)
	expect(t, story(chaos.Fenced, 1105, false), forbidden)
}

// The revoked-lease story is the forbidden violation of seed
// 1795923088091463206 (plain variant, member pause), with the times (ms
// from the pause's start), revisions in their order, and lease IDs of its
// files. The leader m2 is stopped for 3.571 s while w5 holds the lock and
// its Put, sent through m0, is held up; w1, w3 and w4 wait. m0 and m1 elect
// m0, and the workers renew through it; w2, whose renewals fail, gives up
// its key and comes back with a lease the new leader grants. When m2
// resumes, it revokes the four leases it knew as expired, the holder's
// first: a burst of deletions. Then w5's Put lands, after its key is gone,
// and w2 acquires. The run's files have no renewals; the story adds them,
// as a worker now records them, every TTL/3.
type revokedLeaseStory struct {
	variant chaos.Variant
	// renewed: w5's renewals during the pause are acknowledged by the new
	// leader. Without it, none is after the one before the pause.
	renewed bool
	// selfDelete: w5 itself sent a deletion of its key during the pause,
	// with no answer.
	selfDelete bool
}

const pauseStart = 100000 // ms

// pt is a time x ms from the pause's start.
func pt(x float64) int64 { return int64((pauseStart + x) * float64(time.Millisecond)) }

const (
	lease5    = "67eca2255c9ce9b0"
	lease4    = "67eca2255e7b0af9"
	lease3    = "67eca2255f645fbe"
	lease1    = "4a3da2255d1f62b8"
	lease2Old = "24c8a2255f0af3d9"
	lease2    = "24c8a2255f0affa1" // granted during the pause: m2 never knew it
	newLeader = 1100.0             // ms: m0 is elected, at term 9
	resumed   = 3571.0             // ms: m2 resumes
)

func (s revokedLeaseStory) run() (*history, *chaos.Result) {
	h := newHistory(s.variant)
	h.run.End = pt(10000)
	h.hold("w1", 2213, 1000) // the counter is 1
	b := &storyBuild{h: h}

	key5, token5, put5 := b.put("w5", lease5, -10, "m2", 8)
	key2Old, _, put2Old := b.put("w2", lease2Old, -9, "m2", 8)
	key3, _, put3 := b.put("w3", lease3, -8, "m2", 8)
	key1, _, put1 := b.put("w1", lease1, -7, "m2", 8)
	key4, _, put4 := b.put("w4", lease4, -6, "m2", 8)
	w5 := &chaos.Record{Node: "w5", Seq: 2295, Call: pt(-90.104), Acq: pt(-4.668), Token: token5, FnStart: pt(-4.651)}
	h.records = append(h.records, w5)
	h.read(w5)
	w5.ReadEnd = pt(-3.143)
	h.fault(chaos.MemberPause, "m2", pauseStart, pauseStart+int64(resumed))

	w2, key2 := b.requeue(key2Old, put2Old)
	before := h.rev

	w5.Ops = append([]chaos.Op{put5}, b.renewals(lease5, -300, before, s.renewed)...)
	w5.Renewed = b.renewed
	if s.selfDelete {
		w5.Ops = append(w5.Ops, chaos.Op{Op: chaos.OpDelete, Key: key5, Sent: pt(2000), Err: "context deadline exceeded"})
	}
	b.waiters(before, []storyWaiter{
		{"w4", 2259, -8.415, 3583.086, lease4, put4, -200},
		{"w3", 2126, -46.204, 3589.537, lease3, put3, -500},
		{"w1", 2214, -30.227, 3586.82, lease1, put1, -100},
	})

	// m2 resumes and revokes the leases it knew.
	b.del(key5)
	b.del(key4)
	b.del(key3)
	b.del(key1)
	// w5's Put lands.
	h.write(w5, 0, chaos.WriteOK)
	w5.WriteStart, w5.WriteEnd, w5.WriteVia = pt(4.478), pt(3578.351), "m0"
	w5.FnEnd, w5.Lost, w5.End = pt(3578.368), pt(3583.815), pt(3583.851)
	w5.Err = `microlock: lock on "chaos/register" lost: its key was gone when it was released`

	// w2 acquires, and the workload goes on.
	w2.Acq, w2.FnStart = pt(3586.26), pt(3586.749)
	h.read(w2)
	w2.ReadEnd = pt(3590.54)
	h.write(w2, pauseStart+3606, chaos.WriteOK)
	w2.FnEnd, w2.End = pt(3607.688), pt(3609.86)
	b.del(key2)
	h.hold("w3", 2127, pauseStart+3739)

	h.run.Logs = []chaos.LogLine{
		{Member: "m0", At: pt(newLeader - 10), Level: "info", Text: "m0 is starting a new election at term 8"},
		{Member: "m0", At: pt(newLeader), Level: "info", Text: "m0 became leader at term 9"},
		{Member: "m1", At: pt(newLeader + 1), Level: "info", Text: "raft.node: m1 changed leader from m2 to m0 at term 9"},
		{Member: "m2", At: pt(resumed + 3), Level: "info", Text: "m2 became follower at term 9"},
		{Member: "m2", At: pt(resumed + 4), Level: "info", Text: "raft.node: m2 changed leader from m2 to m0 at term 9"},
	}
	return h, h.check()
}

// storyBuild writes a revokedLeaseStory into a history.
type storyBuild struct {
	h       *history
	renewed []int64 // w5's Renewed events
}

// put queues node's key, as microlock names it after its lease.
func (b *storyBuild) put(node, lease string, x float64, via string, term uint64) (string, int64, chaos.Op) {
	h := b.h
	key := tPrefix + lease + "_0"
	h.rev++
	h.run.History = append(h.run.History, chaos.Event{Rev: h.rev, Key: key, CreateRev: h.rev, Value: node})
	return key, h.rev, chaos.Op{Op: chaos.OpPut, Key: key, Lease: lease, Sent: pt(x), Acked: pt(x + 1.5), Rev: h.rev, Term: term, Via: via}
}

func (b *storyBuild) del(key string) int64 {
	h := b.h
	h.rev++
	h.run.History = append(h.run.History, chaos.Event{Rev: h.rev, Key: key, Delete: true})
	return h.rev
}

// renewals sends a renewal every TTL/3 from x0 until m2 resumes: m2
// answers before the pause; during it none is answered before the new
// leader is elected, and after, m0 answers if acked.
func (b *storyBuild) renewals(lease string, x0 float64, rev int64, acked bool) []chaos.Op {
	var ops []chaos.Op
	for x := x0; x < resumed; x += 667 {
		op := chaos.Op{Op: chaos.OpKeepAlive, Lease: lease, Sent: pt(x)}
		switch {
		case x < 0:
			op.Acked, op.TTL, op.Rev, op.Term, op.Via = pt(x+2), 2, rev, 8, "m2"
		case x >= newLeader && acked:
			op.Acked, op.TTL, op.Rev, op.Term, op.Via = pt(x+2), 2, rev, 9, "m0"
		default:
			op.Err = "context deadline exceeded"
		}
		if op.Acked != 0 && lease == lease5 {
			b.renewed = append(b.renewed, op.Acked+int64(100*time.Microsecond))
		}
		ops = append(ops, op)
	}
	return ops
}

// requeue: w2's deadline fires; it deletes its old key and queues again on
// a new lease, which the new leader grants. It returns w2's new call and
// key.
func (b *storyBuild) requeue(key2Old string, put2Old chaos.Op) (*chaos.Record, string) {
	h := b.h
	w2Gone := &chaos.Record{Node: "w2", Seq: 2192, Call: pt(-68.761), End: pt(1656.519),
		Err: `microlock: waiting for "chaos/register": microlock: lock on "chaos/register" lost: no renewal was acknowledged in time`}
	h.records = append(h.records, w2Gone)
	gone := b.del(key2Old)
	w2Gone.Ops = append(append([]chaos.Op{put2Old}, b.renewals(lease2Old, -400, 0, false)...),
		chaos.Op{Op: chaos.OpDelete, Key: key2Old, Sent: pt(1656.6), Acked: pt(1660), Rev: gone, Term: 9, Via: "m1"})
	w2 := &chaos.Record{Node: "w2", Seq: 2193, Call: pt(1707.44)}
	h.records = append(h.records, w2)
	key2, token2, put2 := b.put("w2", lease2, 1720, "m1", 9)
	w2.Token = token2
	w2.Ops = append([]chaos.Op{
		{Op: chaos.OpGrant, Lease: lease2, Sent: pt(1710), Acked: pt(1712), TTL: 2, Rev: gone, Term: 9, Via: "m1"}, put2,
	}, b.renewals(lease2, 1710+667, token2, true)...)
	return w2, key2
}

// storyWaiter is a worker that waits in the queue until m2 deletes its key.
type storyWaiter struct {
	node        string
	seq         int64
	call, end   float64
	lease       string
	put         chaos.Op
	renewalFrom float64
}

// waiters records the calls of ws, which lose their place when m2 resumes.
func (b *storyBuild) waiters(before int64, ws []storyWaiter) {
	for _, w := range ws {
		b.h.records = append(b.h.records, &chaos.Record{Node: w.node, Seq: w.seq, Call: pt(w.call), End: pt(w.end),
			Err: `microlock: waiting for "chaos/register": microlock: lock on "chaos/register" lost: its key was deleted while it waited`,
			Ops: append([]chaos.Op{w.put}, b.renewals(w.lease, w.renewalFrom, before, true)...)})
	}
}

// TestCheckRevokedLease: a holder's late write after etcd revoked the
// lease that it kept renewing is put in chaos.CategoryEtcd, with its
// evidence in the report, and neither fails the run nor counts as allowed.
func TestCheckRevokedLease(t *testing.T) {
	h, res := revokedLeaseStory{variant: chaos.Plain, renewed: true}.run()
	expect(t, res, map[string]int64{"write by non-holder/etcd": 1})
	if f := res.Forbidden(); len(f) != 0 {
		t.Errorf("forbidden: %+v", f)
	}
	cases := res.EtcdCases()
	if len(cases) != 1 {
		t.Fatalf("%d etcd cases, want 1", len(cases))
	}
	rv := cases[0].Etcd
	first := h.records[3].Token + 1 // w2's new key, then the burst
	if rv.Lease != lease5 || rv.Node != "w5" || rv.Rev != first || len(rv.Burst) != 4 || !rv.Burst[0].Held || rv.Burst[1].Held {
		t.Errorf("revocation of %s (%s) at revision %d, burst %+v; want %s (w5) at %d, a burst of 4, the holder's first",
			rv.Lease, rv.Node, rv.Rev, rv.Burst, lease5, first)
	}
	if rv.By != pt(3578.351) || rv.After != pt(1720) {
		t.Errorf("deleted after %s, by %s; want after w2's put at %s, by w5's acknowledgement at %s",
			fmtNs(rv.After), fmtNs(rv.By), fmtNs(pt(1720)), fmtNs(pt(3578.351)))
	}
	if rv.Renewal.Sent != pt(3035) || rv.Renewal.Via != "m0" || rv.Fault.Target != "m2" || len(rv.During) != 3 {
		t.Errorf("last renewal %+v, %d during the fault, fault %+v; want the one sent at 3035 ms through m0, 3, m2's pause",
			rv.Renewal, len(rv.During), rv.Fault)
	}

	report := chaos.Report(chaos.Short(), "v3.7.3", []*chaos.Result{res}, 5)
	t.Log("\n" + report)
	for _, want := range []string{
		`violations: forbidden / etcd / allowed\s+0 / 1 / 0`,
		`write by non-holder\s+0 / 1 / 0`,
		`plain: write by non-holder \(member pause; etcd: lease revoked by etcd while its holder kept renewing it\): revision \d+: w5#2295`,
		`key chaos/register/67eca2255c9ce9b0_0 \(w5, token \d+, lease 67eca2255c9ce9b0\) deleted at revision \d+, after 101\.720s \(w2's put answered by m1 at revision \d+\) and by 103\.578s \(w5#2295's write, acknowledged at revision \d+\)`,
		`not by a client: no worker sent a deletion of the key or a revocation of lease 67eca2255c9ce9b0`,
		`last acknowledged renewal of lease 67eca2255c9ce9b0: keepalive sent at 103\.035s, acknowledged at 103\.037s by m0 \(raft term 9\), TTL 2s: etcd could not rightly expire the lease before 105\.035s`,
		`microlock's last Renewed event of the hold: 103\.037s`,
		`fault: member pause of m2 from 100\.000s to 103\.571s \(3\.57s\)`,
		`renewals of lease 67eca2255c9ce9b0 acknowledged during the fault \(sent→acknowledged\): 101\.701s→101\.703s by m0, term 9; 102\.368s`,
		`deleted in a row: 4 lock key\(s\): \d+ w5 \(holding, 67eca2255c9ce9b0\), \d+ w4 \(waiting, 67eca2255e7b0af9\), \d+ w3 \(waiting, 67eca2255f645fbe\), \d+ w1 \(waiting, 4a3da2255d1f62b8\)`,
		`the hold: w5#2295 acquired token \d+ at 99\.995s, sent its write at 100\.004s through m0, answered at 103\.578s \(ok\)`,
		`101\.100s m0 info: m0 became leader at term 9`,
		`103\.575s m2 info: raft.node: m2 changed leader from m2 to m0 at term 9`,
	} {
		if !regexp.MustCompile(want).MatchString(report) {
			t.Errorf("the report lacks %q", want)
		}
	}
}

// TestCheckRevokedLeaseFallsShort: the same story without one piece of the
// evidence stays forbidden, and says which piece is missing.
func TestCheckRevokedLeaseFallsShort(t *testing.T) {
	for _, tc := range []struct {
		name  string
		story revokedLeaseStory
		why   string
	}{
		{
			// Its renewals were not acknowledged during the pause: etcd
			// could rightly expire the lease 2 s after the last one, sent
			// before the pause, long before the deletion was seen.
			"not renewed", revokedLeaseStory{variant: chaos.Plain},
			"the last acknowledged renewal of its lease 67eca2255c9ce9b0 was sent at 99.700s with a TTL of 2s: etcd could rightly expire it 1.88",
		},
		{
			"deleted by its worker", revokedLeaseStory{variant: chaos.Plain, renewed: true, selfDelete: true},
			"w5 sent a deletion of its key at 102.000s",
		},
		{
			// The fence must refuse a late write, whatever ended the hold.
			"fenced", revokedLeaseStory{variant: chaos.Fenced, renewed: true},
			"a fenced write must be refused by its fence",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, res := tc.story.run()
			expect(t, res, map[string]int64{"write by non-holder/false": 1})
			f := res.Forbidden()
			if len(f) != 1 || !strings.Contains(f[0].Detail, "not "+chaos.CategoryEtcd+": "+tc.why) {
				t.Errorf("forbidden %+v; want one, saying %q", f, tc.why)
			}
			report := chaos.Report(chaos.Short(), "v3.7.3", []*chaos.Result{res}, 5)
			if !regexp.MustCompile(`violations: forbidden / etcd / allowed\s+1 / 0 / 0`).MatchString(report) {
				t.Errorf("report:\n%s", report)
			}
		})
	}
}

func fmtNs(t int64) string { return fmt.Sprintf("%.3fs", float64(t)/1e9) }

// TestCheckWriterPausedMidWrite: a worker stopped a moment after it called
// its plain Put, before the request left the process, sends it on waking,
// after its hold ended: the same as a write sent on waking (seen in a full
// run: the pause began 1 ms after the Put was called, and the write landed
// as the worker resumed). A pause that began after the write was done
// excuses nothing.
func TestCheckWriterPausedMidWrite(t *testing.T) {
	story := func(writeStart, writeEnd int64) *chaos.Result {
		h := newHistory(chaos.Plain)
		h.hold("w1", 1, 100)
		paused := h.acquire("w2", 1, 900)
		h.read(paused)
		h.fault(chaos.WorkerPause, "w2", 1000, 4000)
		h.run.Faults[0].Holding, h.run.Faults[0].Token = true, paused.Token
		h.release(paused) // the lease expires during the pause
		h.hold("w3", 1, 3100)
		h.write(paused, 4001, chaos.WriteUnknown)
		paused.WriteStart, paused.WriteEnd = ms(writeStart), ms(writeEnd)
		paused.Lost, paused.FnEnd, paused.End = ms(4002), ms(4003), ms(4004)
		h.hold("w1", 2, 4100)
		return h.check()
	}
	t.Run("paused mid-write", func(t *testing.T) {
		res := story(999, 4001)
		if n := res.Count("write by non-holder", true); n != 1 {
			t.Errorf("write by non-holder allowed = %d, want 1", n)
		}
		if len(res.Forbidden()) != 0 {
			t.Errorf("forbidden: %+v", res.Forbidden())
		}
	})
	t.Run("paused after the write was done", func(t *testing.T) {
		res := story(990, 995)
		if n := res.Count("write by non-holder", false); n != 1 {
			t.Errorf("write by non-holder forbidden = %d, want 1", n)
		}
	})
}
