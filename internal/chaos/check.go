package chaos

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// Checks, as named in violations and reports.
const (
	CheckLostUpdate   = "lost update"                // a write did not build on the one before it
	CheckMissingWrite = "acknowledged write missing" // etcd acknowledged a write that is not in its history
	CheckTokenOrder   = "token order"                // a write's token is not above the previous write's
	CheckNonHolder    = "write by non-holder"        // a write landed while its writer did not hold the lock
	CheckLossOrder    = "loss signal after takeover" // a holder was still working when the next one acquired
	CheckLiveness     = "liveness"                   // no acquisition within TTL + 5 s of a fault's heal
	CheckHistory      = "history"                    // a record and etcd's history disagree
	CheckOverLimit    = "over the limit"             // more holders at once than a semaphore's limit
	CheckSharedExcl   = "shared with exclusive"      // an exclusive hold overlapped another hold
)

// Checks lists the checks in the order reports show them.
func Checks() []string {
	return []string{CheckLostUpdate, CheckMissingWrite, CheckTokenOrder, CheckNonHolder, CheckLossOrder, CheckLiveness, CheckHistory,
		CheckOverLimit, CheckSharedExcl, CheckTermNoKey, CheckRecampaign}
}

// LivenessSlack is how long after TTL a healed fault may go without an
// acquisition.
const LivenessSlack = 5 * time.Second

// Run is everything a variant's run left behind.
type Run struct {
	Variant    Variant
	TTL        time.Duration
	LockPrefix string // the lock's key plus "/"
	Counter    string
	Start, End int64 // Now readings
	Records    []Record
	Faults     []Fault // in order
	History    []Event // ReadHistory of a prefix covering LockPrefix and Counter
	// Logs are the etcd members' log lines about leaders and leases (see
	// ReadMemberLog), in time order: evidence, never a verdict.
	Logs []LogLine
}

// Violation is one failed check, with the fault it happened under.
type Violation struct {
	Check string
	Fault Kind // the latest fault that began before it; "" if none
	// Allowed marks what no lock can prevent, with the evidence in Excuse:
	// a paused worker cannot hear its loss signal, and an unguarded write
	// delayed on its way can land after the hold ended. Fencing must stop
	// such writes; nothing else may cause a violation.
	Allowed bool
	Excuse  string
	// Etcd, when set, puts a violation that is not allowed in CategoryEtcd,
	// with its evidence: etcd revoked the lease of a holder that kept
	// renewing it. It does not fail the run, and is never counted as
	// allowed.
	Etcd   *Revocation
	Count  int64 // increments lost, for CheckLostUpdate; 1 otherwise
	Detail string
}

// Result is the checked outcome of one variant's run.
type Result struct {
	Variant  Variant
	Duration time.Duration

	Calls, Holds   int
	Attempted      int // writes sent
	Acked          int
	Refused        int // fenced writes that etcd refused
	Unknown        int // writes without an answer
	Landed         int // writes in etcd's history
	LandedUnacked  int // of those, writes whose worker got no answer
	Final          int64
	LostIncrements int64 // increments overwritten: Landed - Final
	LostAcked      int   // acknowledged writes among them

	Faults        map[Kind]int
	HoldingFaults map[Kind]int // worker faults that caught the holder
	Violations    []Violation

	// Per fault kind: from the fault to the first loss signal while it
	// lasted or before the next fault, and to the next acquisition.
	ToLoss, ToAcquire map[Kind][]time.Duration
	// From a lost holder's loss signal to the next holder's acquisition.
	Margins []time.Duration

	// The leader variant's terms, lost terms, lost terms after which the
	// worker campaigned again, and for every fault that deposed a leader
	// the time from the fault to the next leader.
	Terms, TermsLost, TermsRecampaigned int
	ToLeader                            []time.Duration

	// Pauses says, for every worker paused while it held the lock, where in
	// its hold the pause caught it and what it did on waking.
	Pauses []Pause
}

// Where a pause caught a holder.
const (
	PhaseRead  = "reading"                // before its read returned, or before it heard of its grant
	PhaseGap   = "between read and write" // the window that only fencing covers
	PhaseWrite = "writing"                // its write was on its way
	PhaseAfter = "after its write"        // releasing
)

// Pause is what a worker paused while it held the lock did on waking.
type Pause struct {
	Node, Phase string
	Wrote       bool // it tried to write after the pause (it may have been cancelled)
	Landed      bool // that write is in etcd's history
	Refused     bool // etcd refused it: the fence
}

// Forbidden returns the violations that fail the run.
func (r *Result) Forbidden() []Violation {
	var out []Violation
	for _, v := range r.Violations {
		if !v.Allowed && v.Etcd == nil {
			out = append(out, v)
		}
	}
	return out
}

// EtcdCases returns the violations in CategoryEtcd.
func (r *Result) EtcdCases() []Violation {
	var out []Violation
	for _, v := range r.Violations {
		if v.Etcd != nil {
			out = append(out, v)
		}
	}
	return out
}

// Count sums the violations of one check that are allowed, or forbidden
// (not allowed, and not in CategoryEtcd).
func (r *Result) Count(check string, allowed bool) int64 {
	var n int64
	for _, v := range r.Violations {
		if v.Check == check && v.Allowed == allowed && v.Etcd == nil {
			n += v.Count
		}
	}
	return n
}

// CountEtcd sums the violations of one check in CategoryEtcd.
func (r *Result) CountEtcd(check string) int64 {
	var n int64
	for _, v := range r.Violations {
		if v.Check == check && v.Etcd != nil {
			n += v.Count
		}
	}
	return n
}

// Check checks a run.
func Check(run *Run) *Result {
	c := &checker{
		run: run,
		res: &Result{
			Variant:       run.Variant,
			Duration:      time.Duration(run.End - run.Start),
			Faults:        make(map[Kind]int),
			HoldingFaults: make(map[Kind]int),
			ToLoss:        make(map[Kind][]time.Duration),
			ToAcquire:     make(map[Kind][]time.Duration),
		},
		byID:   make(map[string]*Record),
		landed: make(map[*Record]int64),
	}
	for i := range run.Records {
		r := &run.Records[i]
		c.byID[recordID(r.Node, r.Seq)] = r
	}
	c.index()
	c.counts()
	if run.Variant.Admission() {
		c.admission()
	} else {
		c.register()
		c.handoffs()
	}
	c.acknowledged()
	c.faults()
	c.leader()
	return c.res
}

type checker struct {
	run    *Run
	res    *Result
	byID   map[string]*Record
	landed map[*Record]int64 // record → revision its write landed at

	// For the revocation checks (see index).
	keys         map[int64]*lockKey // create revision → the lock key
	ops          map[string][]Op    // node → its ops, by send time
	leaseOf      map[string][]Op    // lock key → the ops that put it
	seen, before []observation
	revocations  map[int64]revocationResult // by token
}

func recordID(node string, seq int64) string { return fmt.Sprintf("%s#%d", node, seq) }

func (c *checker) counts() {
	for _, r := range c.run.Records {
		c.res.Calls++
		if r.Acq != 0 {
			c.res.Holds++
		}
		switch r.Write {
		case WriteOK:
			c.res.Attempted++
			c.res.Acked++
		case WriteRefused:
			c.res.Attempted++
			c.res.Refused++
		case WriteUnknown:
			c.res.Attempted++
			c.res.Unknown++
		}
	}
}

// faultAt returns the latest fault that began at or before t.
func (c *checker) faultAt(t int64) Kind {
	var k Kind
	for _, f := range c.run.Faults {
		if f.Start <= t {
			k = f.Kind
		}
	}
	return k
}

// add records a violation at time t (0: unknown). It is allowed when
// excuse, the evidence that no lock could have prevented it, is not empty.
func (c *checker) add(check string, t int64, count int64, excuse string, format string, args ...any) {
	c.addRevoked(check, t, count, excuse, nil, "", format, args...)
}

// addRevoked is add for a violation that etcd's revocation of a renewed
// lease may explain: with no excuse, it is in CategoryEtcd if rv is set,
// and forbidden otherwise, its detail saying why not (notEtcd) when the
// holder's key was deleted.
func (c *checker) addRevoked(check string, t int64, count int64, excuse string, rv *Revocation, notEtcd string, format string, args ...any) {
	k := Kind("")
	if t != 0 {
		k = c.faultAt(t)
	}
	v := Violation{
		Check: check, Fault: k, Allowed: excuse != "", Excuse: excuse, Count: count,
		Detail: fmt.Sprintf(format, args...),
	}
	switch {
	case excuse != "":
	case rv != nil:
		v.Etcd = rv
	case notEtcd != "":
		v.Detail += "; not " + CategoryEtcd + ": " + notEtcd
	}
	c.res.Violations = append(c.res.Violations, v)
}

// Excuses: what no lock can prevent, each allowed only with its evidence.
const (
	// ExcusePausedHolder: a stopped process cannot hear its loss signal.
	ExcusePausedHolder = "its holder was paused while it held the lock"
	// ExcusePausedWriter: a plain write of a worker paused during its hold
	// before the write was done: sent on waking, or stopped inside the
	// process on its way out (a pause a moment after the Put was called).
	ExcusePausedWriter = "its writer was paused while it held the lock"
	// ExcuseDelayedWrite: a plain write sent while its writer held the lock,
	// in flight during a member pause, and still when the loss signal came:
	// it was held up in the cluster (in the paused member, or in a proposal
	// forwarded to it) where the cancellation could not reach it, and etcd
	// applied it after the hold had ended.
	ExcuseDelayedWrite = "sent while its writer held the lock and held up by a paused member until after the hold ended"
)

// lateWrite returns why a plain write that landed outside its hold is
// excused, or "" if it is not: fenced writes never are.
func (c *checker) lateWrite(r *Record) string {
	if r == nil || c.run.Variant != Plain {
		return ""
	}
	for _, f := range c.run.Faults {
		switch f.Kind {
		case WorkerPause:
			if f.Token != 0 && r.Token == f.Token && r.WriteEnd >= f.Start {
				return ExcusePausedWriter
			}
		case MemberPause:
			// In flight during the pause, and still when the loss signal
			// came. A loss signal that came too late is the handoff check's
			// to catch; here the write was held up, not sent late.
			inPause := r.WriteStart <= f.Heal && r.WriteEnd >= f.Start
			if inPause && r.Lost != 0 && r.WriteStart < r.Lost && r.WriteEnd >= r.Lost {
				return ExcuseDelayedWrite
			}
		}
	}
	return ""
}

// pausedHolder returns ExcusePausedHolder if r is the hold that a worker
// pause caught.
func (c *checker) pausedHolder(r *Record) string {
	for _, f := range c.run.Faults {
		if f.Kind == WorkerPause && f.Token != 0 && r.Token == f.Token {
			return ExcusePausedHolder
		}
	}
	return ""
}

// acknowledged checks that every acknowledged write is in etcd's history at
// the revision etcd answered with.
func (c *checker) acknowledged() {
	for i := range c.run.Records {
		r := &c.run.Records[i]
		if r.Write != WriteOK {
			continue
		}
		if rev, ok := c.landed[r]; !ok || rev != r.WriteRev {
			c.add(CheckMissingWrite, r.WriteStart, 1, "", "%s#%d: write of %d acknowledged at revision %d, found at %d",
				r.Node, r.Seq, r.Written, r.WriteRev, rev)
		}
	}
}

// holds returns the records that held the lock, in token order: the order
// in which etcd granted the lock.
func (c *checker) holds() []*Record {
	var hs []*Record
	for i := range c.run.Records {
		if r := &c.run.Records[i]; r.Acq != 0 {
			hs = append(hs, r)
		}
	}
	slices.SortFunc(hs, func(a, b *Record) int { return cmp.Compare(a.Token, b.Token) })
	return hs
}

// handoffs checks that every holder had stopped working (its fn returned or
// its loss signal came) before the next holder acquired, on the monotonic
// clock that all processes here share.
func (c *checker) handoffs() {
	hs := c.holds()
	for i := 1; i < len(hs); i++ {
		prev, next := hs[i-1], hs[i]
		if prev.Token == next.Token {
			c.add(CheckHistory, next.Acq, 1, "", "%s#%d and %s#%d both hold token %d", prev.Node, prev.Seq, next.Node, next.Seq, next.Token)
			continue
		}
		stop := prev.Stop()
		if stop == 0 || stop >= next.Acq {
			how := "its fn was still running"
			if prev.Lost != 0 {
				how = fmt.Sprintf("its loss signal came %v later", time.Duration(prev.Lost-next.Acq))
			}
			rv, why := c.revokedHold(prev)
			c.addRevoked(CheckLossOrder, next.Acq, 1, c.pausedHolder(prev), rv, why, "%s#%d (token %d) acquired while %s#%d (token %d) still worked: %s",
				next.Node, next.Seq, next.Token, prev.Node, prev.Seq, prev.Token, how)
		}
		if prev.Lost != 0 && (prev.FnEnd == 0 || prev.Lost <= prev.FnEnd) && prev.Lost < next.Acq {
			c.res.Margins = append(c.res.Margins, time.Duration(next.Acq-prev.Lost))
		}
	}
}

// faults checks liveness after every fault and measures the time from each
// fault to the first loss signal and to the next acquisition.
func (c *checker) faults() {
	hs := c.holds()
	acqs := make([]int64, 0, len(hs))
	for _, r := range hs {
		acqs = append(acqs, r.Acq)
	}
	slices.Sort(acqs)
	after := func(t int64) int64 {
		i, _ := slices.BinarySearch(acqs, t+1)
		if i == len(acqs) {
			return 0
		}
		return acqs[i]
	}
	var losses []int64
	for _, r := range c.run.Records {
		if r.Lost != 0 {
			losses = append(losses, r.Lost)
		}
	}
	slices.Sort(losses)

	for i, f := range c.run.Faults {
		c.res.Faults[f.Kind]++
		if f.Holding {
			c.res.HoldingFaults[f.Kind]++
			if f.Kind == WorkerPause && f.Token != 0 {
				c.pause(f)
			}
		}
		limit := f.Heal + int64(c.run.TTL+LivenessSlack)
		if a := after(f.Heal); a == 0 || a > limit {
			wait := "none before the run ended"
			if a != 0 {
				wait = fmt.Sprintf("the first after %v", time.Duration(a-f.Heal))
			}
			c.add(CheckLiveness, f.Start, 1, "", "%s of %s: no acquisition within %v of its heal: %s",
				f.Kind, f.Target, c.run.TTL+LivenessSlack, wait)
		}
		if a := after(f.Start); a != 0 {
			c.res.ToAcquire[f.Kind] = append(c.res.ToAcquire[f.Kind], time.Duration(a-f.Start))
		}
		end := c.run.End
		if i+1 < len(c.run.Faults) {
			end = c.run.Faults[i+1].Start
		}
		j, _ := slices.BinarySearch(losses, f.Start)
		if j < len(losses) && losses[j] < end {
			c.res.ToLoss[f.Kind] = append(c.res.ToLoss[f.Kind], time.Duration(losses[j]-f.Start))
		}
	}
}

// pause records where a worker pause caught its holder and what the holder
// did on waking.
func (c *checker) pause(f Fault) {
	for i := range c.run.Records {
		// Acq may come after the pause began: etcd granted the lock, and the
		// worker only heard of it on waking.
		r := &c.run.Records[i]
		if r.Token != f.Token {
			continue
		}
		p := Pause{Node: r.Node}
		switch {
		case !r.ReadOK || f.Start < r.ReadEnd:
			p.Phase = PhaseRead
		case r.WriteStart == 0 || f.Start < r.WriteStart:
			p.Phase = PhaseGap
		case f.Start < r.WriteEnd:
			p.Phase = PhaseWrite
		default:
			p.Phase = PhaseAfter
		}
		_, p.Landed = c.landed[r]
		p.Wrote = r.WriteStart >= f.Start
		p.Refused = r.Write == WriteRefused
		c.res.Pauses = append(c.res.Pauses, p)
		return
	}
}
