package chaos

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// CategoryEtcd names the violations that etcd itself caused by revoking a
// lease while its holder kept renewing it, which no lock built on leases
// can prevent: a leader that stalls (a process pause, a slow disk) and
// resumes may revoke leases that were renewed through its successor in the
// meantime (etcd issues #12528, #15247). The key watch is then the holder's
// only loss signal, and it races with the next holder; only a fence stops
// the late write. Such a violation neither fails the run nor counts as
// allowed: the report shows each one with its evidence, and one whose
// evidence falls short in any respect stays forbidden.
const CategoryEtcd = "lease revoked by etcd while its holder kept renewing it"

// clockRate bounds the rate error between the clock etcd measures a TTL
// with and the suite's; both are the same machine's CLOCK_MONOTONIC here,
// so this is only a safety margin, as in microlock's own deadline.
const clockRate = 1e-3

// Revocation is the evidence that etcd deleted a lock key by revoking its
// lease while the lease was being renewed.
type Revocation struct {
	Key, Node, Lease string
	Token            int64 // the key's create revision
	Rev              int64 // the revision that deleted it
	// The deletion happened after After (0: unknown) and no later than By
	// (Now readings), as the records around it show.
	After, By         int64
	AfterWhat, ByWhat string
	// Renewal is the last acknowledged grant or renewal of Lease sent
	// before By: etcd could not rightly expire the lease before
	// Renewal.Sent + Renewal.TTL seconds.
	Renewal Op
	// During are the renewals of Lease acknowledged from the fault's start
	// until By.
	During []Op
	// Renewed is the hold's last Renewed event (OnEvent) before By; 0 if
	// none. It is when microlock saw the acknowledgement, not when the
	// renewal was sent.
	Renewed int64
	Fault   Fault
	Burst   []BurstKey // the lock keys deleted in the same run of revisions, this one included
	Holder  string     // what the holder's record says
	Logs    []LogLine  // the member log lines around the fault and the deletion
}

// BurstKey is a lock key deleted in a burst of deletions.
type BurstKey struct {
	Rev              int64
	Key, Node, Lease string
	Held             bool // its worker had acquired the lock with it, not still waiting
}

// lockKey is one incarnation of a lock key in etcd's history.
type lockKey struct {
	key, node string
	create    int64
	head      int64 // the revision at which it became the oldest key, the holder; 0: never
	deleted   int64 // the revision of its deletion; 0: never
	index     int   // its deletion's index in the history
}

// observation is a time at which a record shows etcd at a revision.
type observation struct {
	rev, at int64
	what    string
}

type revocationResult struct {
	rv  *Revocation
	why string
}

// index prepares what the revocation checks look up: the lock keys'
// lifetimes, the workers' ops, and the observations that bound when a
// revision happened.
func (c *checker) index() {
	c.keys = make(map[int64]*lockKey)
	c.ops = make(map[string][]Op)
	c.leaseOf = make(map[string][]Op)
	c.revocations = make(map[int64]revocationResult)
	c.indexKeys()
	c.indexRecords()
	c.indexOps()
}

// indexKeys follows each lock key from its creation to its deletion, and
// notes when it became the oldest of the queue.
func (c *checker) indexKeys() {
	run := c.run
	queue := make(map[string]*lockKey)
	for i, ev := range run.History {
		if !strings.HasPrefix(ev.Key, run.LockPrefix) {
			continue
		}
		if ev.Delete {
			if k := queue[ev.Key]; k != nil {
				k.deleted, k.index = ev.Rev, i
				delete(queue, ev.Key)
			}
		} else if ev.CreateRev == ev.Rev {
			k := &lockKey{key: ev.Key, node: ev.Value, create: ev.Rev}
			queue[ev.Key] = k
			c.keys[ev.Rev] = k
		}
		var first *lockKey
		for _, k := range queue {
			if first == nil || k.create < first.create {
				first = k
			}
		}
		if first != nil && first.head == 0 {
			first.head = ev.Rev
		}
	}
}

// indexRecords gathers the workers' ops, and what their records saw.
func (c *checker) indexRecords() {
	run := c.run
	for i := range run.Records {
		r := &run.Records[i]
		c.ops[r.Node] = append(c.ops[r.Node], r.Ops...)
		id := recordID(r.Node, r.Seq)
		if r.ReadOK {
			c.seen = append(c.seen, observation{r.ReadRev, r.ReadEnd, id + "'s read at revision " + fmt.Sprint(r.ReadRev)})
			c.before = append(c.before, observation{r.ReadRev, r.FnStart, id + "'s read at revision " + fmt.Sprint(r.ReadRev)})
		}
		if r.Write == WriteOK {
			c.seen = append(c.seen, observation{r.WriteRev, r.WriteEnd, id + "'s write, acknowledged at revision " + fmt.Sprint(r.WriteRev)})
			c.before = append(c.before, observation{r.WriteRev, r.WriteStart, id + "'s write, acknowledged at revision " + fmt.Sprint(r.WriteRev)})
		}
		if k := c.keys[r.Token]; r.Acq != 0 && k != nil && k.head != 0 {
			c.seen = append(c.seen, observation{k.head, r.Acq, fmt.Sprintf("%s's acquisition (its key became the oldest at revision %d)", id, k.head)})
		}
	}
}

// indexOps orders each worker's ops, notes the puts of each lock key, and
// what the answered ops saw.
func (c *checker) indexOps() {
	for node, ops := range c.ops {
		slices.SortStableFunc(ops, func(a, b Op) int { return cmp.Compare(a.Sent, b.Sent) })
		for _, op := range ops {
			if op.Op == OpPut {
				c.leaseOf[op.Key] = append(c.leaseOf[op.Key], op)
			}
			if op.Acked == 0 || op.Rev == 0 {
				continue
			}
			what := fmt.Sprintf("%s's %s answered by %s at revision %d", node, op.Op, orUnknown(op.Via), op.Rev)
			c.seen = append(c.seen, observation{op.Rev, op.Acked, what})
			// A renewal's header is the answering member's own revision,
			// read without consensus: it shows what had happened by then,
			// not what had not. The others went through raft.
			if op.Op != OpKeepAlive {
				c.before = append(c.before, observation{op.Rev, op.Sent, what})
			}
		}
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "an unknown member"
	}
	return s
}

// bounds returns when revision rev happened: after the latest observation
// of an earlier revision (0 if none), and by the earliest observation of it
// or a later one (0 if none).
func (c *checker) bounds(rev int64) (after int64, afterWhat string, by int64, byWhat string) {
	for _, o := range c.before {
		if o.rev < rev && o.at > after {
			after, afterWhat = o.at, o.what
		}
	}
	for _, o := range c.seen {
		if o.rev >= rev && (by == 0 || o.at < by) {
			by, byWhat = o.at, o.what
		}
	}
	return after, afterWhat, by, byWhat
}

// revocation returns the evidence that the key with create revision token
// was deleted by etcd revoking its lease while the lease was being renewed,
// or why the records do not show that ("" if the key was never deleted, so
// that the question does not arise). All of these must hold:
//
//   - the deletion is bounded in time by the records around it;
//   - the key was put with a known lease, and no worker sent a deletion of
//     the key, nor a revocation of the lease, that can have taken effect
//     between the key's creation and the deletion: it was not released;
//   - an acknowledged renewal (or the grant) of the lease was sent less than
//     its granted TTL before the deletion was seen, so etcd could not rightly
//     have expired the lease yet;
//   - a member fault began before the deletion was seen, and the deletion
//     may have happened before that fault healed plus a TTL: the stale
//     leader.
func (c *checker) revocation(token int64) (*Revocation, string) {
	if res, ok := c.revocations[token]; ok {
		return res.rv, res.why
	}
	rv, why := c.findRevocation(token)
	c.revocations[token] = revocationResult{rv, why}
	return rv, why
}

func (c *checker) findRevocation(token int64) (*Revocation, string) {
	k := c.keys[token]
	if k == nil || k.deleted == 0 {
		return nil, ""
	}
	rv := &Revocation{Key: k.key, Node: k.node, Token: token, Rev: k.deleted}
	rv.After, rv.AfterWhat, rv.By, rv.ByWhat = c.bounds(k.deleted)
	if rv.By == 0 {
		return nil, fmt.Sprintf("no record saw its key's deletion at revision %d", k.deleted)
	}

	// The put that created this incarnation of the key, answered at its
	// create revision: slots are reused, so the key's name is not enough.
	var created int64
	for _, op := range c.leaseOf[k.key] {
		if op.Acked != 0 && op.Rev == token {
			rv.Lease, created = op.Lease, op.Sent
		}
	}
	if rv.Lease == "" {
		return nil, fmt.Sprintf("no record shows the put that created its key %s", k.key)
	}
	// In order: each check's evidence is what the next one reads.
	for _, check := range []func() string{
		func() string { return c.byClient(rv, created) },
		func() string { return c.lastRenewal(rv) },
		func() string { return c.memberFault(rv) },
	} {
		if why := check(); why != "" {
			return nil, why
		}
	}
	c.describe(rv, k)
	return rv, ""
}

// byClient says which worker's request may have deleted rv's key or
// revoked its lease since the key was created at created, if any.
func (c *checker) byClient(rv *Revocation, created int64) string {
	for _, node := range slices.Sorted(maps.Keys(c.ops)) {
		for _, op := range c.ops[node] {
			if op.Sent >= rv.By || (op.Acked != 0 && op.Acked < created) {
				continue // too late to cause it, or done before the key existed
			}
			if op.Deletes(rv.Key) {
				return fmt.Sprintf("%s sent a deletion of its key at %s", node, fmtAt(op.Sent))
			}
			if op.Op == OpRevoke && op.Lease == rv.Lease {
				return fmt.Sprintf("%s sent a revocation of its lease %s at %s", node, rv.Lease, fmtAt(op.Sent))
			}
		}
	}
	return ""
}

// lastRenewal sets rv's last acknowledged renewal before its deletion was
// seen, and says why etcd could rightly have expired the lease, if it could.
func (c *checker) lastRenewal(rv *Revocation) string {
	for _, ops := range c.ops {
		for _, op := range ops {
			if op.Lease == rv.Lease && op.Renewal() && op.Sent < rv.By && op.Sent > rv.Renewal.Sent {
				rv.Renewal = op
			}
		}
	}
	if rv.Renewal.Sent == 0 {
		return fmt.Sprintf("no acknowledged renewal of its lease %s was sent before its deletion was seen at %s", rv.Lease, fmtAt(rv.By))
	}
	ttl := time.Duration(rv.Renewal.TTL) * time.Second
	if expiry := rv.Renewal.Sent + int64(float64(ttl)*(1-clockRate)); expiry <= rv.By {
		return fmt.Sprintf("the last acknowledged renewal of its lease %s was sent at %s with a TTL of %v: etcd could rightly expire it %v before its deletion was seen at %s",
			rv.Lease, fmtAt(rv.Renewal.Sent), ttl, time.Duration(rv.By-expiry), fmtAt(rv.By))
	}
	return ""
}

// memberFault sets the member fault under way when rv's key was deleted,
// and says so if there was none.
func (c *checker) memberFault(rv *Revocation) string {
	found := false
	for _, f := range c.run.Faults {
		switch f.Kind {
		case MemberPause, MemberPartition, LeaderKill, FollowerKill:
			if f.Start < rv.By && rv.After < f.Heal+int64(c.run.TTL) {
				rv.Fault, found = f, true
			}
		}
	}
	if !found {
		return fmt.Sprintf("no member fault was under way when its key was deleted (between %s and %s)", fmtAt(rv.After), fmtAt(rv.By))
	}
	return ""
}

// describe adds to rv the evidence that does not decide the case but
// explains it: the renewals during the fault, microlock's view, the other
// keys deleted with this one, the holder's record and the member logs.
func (c *checker) describe(rv *Revocation, k *lockKey) {
	for _, ops := range c.ops {
		for _, op := range ops {
			if op.Lease == rv.Lease && op.Renewal() && op.Acked >= rv.Fault.Start && op.Acked <= rv.By {
				rv.During = append(rv.During, op)
			}
		}
	}
	slices.SortFunc(rv.During, func(a, b Op) int { return cmp.Compare(a.Sent, b.Sent) })
	c.burst(rv, k)

	for i := range c.run.Records {
		r := &c.run.Records[i]
		if r.Acq == 0 || r.Token != rv.Token {
			continue
		}
		for _, t := range r.Renewed {
			if t <= rv.By {
				rv.Renewed = max(rv.Renewed, t)
			}
		}
		rv.Holder = describeHold(r)
	}

	from, to := rv.Fault.Start-int64(time.Second), rv.By+int64(time.Second)
	if rv.After != 0 {
		from = min(from, rv.After-int64(time.Second))
	}
	for _, l := range c.run.Logs {
		if l.At >= from && l.At <= to {
			rv.Logs = append(rv.Logs, l)
		}
	}
}

// burst adds to rv the deletions in a row around k's: a stale leader
// revokes every lease it believes expired, one after the other.
func (c *checker) burst(rv *Revocation, k *lockKey) {
	h := c.run.History
	lo, hi := k.index, k.index
	isDelete := func(i int) bool { return h[i].Delete && strings.HasPrefix(h[i].Key, c.run.LockPrefix) }
	for lo > 0 && isDelete(lo-1) && h[lo-1].Rev >= h[lo].Rev-1 {
		lo--
	}
	for hi+1 < len(h) && isDelete(hi+1) && h[hi+1].Rev <= h[hi].Rev+1 {
		hi++
	}
	acquired := make(map[int64]bool)
	for _, r := range c.run.Records {
		if r.Acq != 0 {
			acquired[r.Token] = true
		}
	}
	for i := lo; i <= hi; i++ {
		b := BurstKey{Rev: h[i].Rev, Key: h[i].Key}
		for _, o := range c.keys {
			if o.key == h[i].Key && o.deleted == h[i].Rev {
				b.Node, b.Held = o.node, acquired[o.create]
				for _, op := range c.leaseOf[o.key] {
					if op.Acked != 0 && op.Rev == o.create {
						b.Lease = op.Lease
					}
				}
			}
		}
		rv.Burst = append(rv.Burst, b)
	}
}

func describeHold(r *Record) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s#%d acquired token %d at %s", r.Node, r.Seq, r.Token, fmtAt(r.Acq))
	if r.WriteStart != 0 {
		fmt.Fprintf(&b, ", sent its write at %s", fmtAt(r.WriteStart))
		if r.WriteVia != "" {
			fmt.Fprintf(&b, " through %s", r.WriteVia)
		}
		fmt.Fprintf(&b, ", answered at %s (%s)", fmtAt(r.WriteEnd), r.Write)
	}
	if r.FnEnd != 0 {
		fmt.Fprintf(&b, ", its fn returned at %s", fmtAt(r.FnEnd))
	}
	if r.Lost != 0 {
		fmt.Fprintf(&b, ", its loss signal came at %s", fmtAt(r.Lost))
	} else {
		b.WriteString(", no loss signal")
	}
	fmt.Fprintf(&b, "; WithLock returned at %s", fmtAt(r.End))
	if r.Err != "" {
		fmt.Fprintf(&b, ": %s", r.Err)
	}
	return b.String()
}

// revokedWrite returns the revocation that explains a plain write landing
// outside its hold: the write was sent while its writer held the lock (not
// after its loss signal), etcd revoked the renewed lease meanwhile, and the
// writer stopped within a TTL of the deletion being seen, the longest its
// renewal loop alone takes to notice a lease that is gone. A fenced write
// never has one: its fence must refuse it, whatever ended the hold.
func (c *checker) revokedWrite(r *Record) (*Revocation, string) {
	if r == nil {
		return nil, ""
	}
	if c.run.Variant != Plain {
		return nil, "a fenced write must be refused by its fence, whatever ended the hold"
	}
	rv, why := c.revocation(r.Token)
	if rv == nil {
		return nil, why
	}
	if r.Lost != 0 && r.WriteStart >= r.Lost {
		return nil, "the write was sent after its loss signal"
	}
	return c.stoppedInTime(r, rv)
}

// revokedHold returns the revocation that explains a holder still working
// when the next one acquired.
func (c *checker) revokedHold(r *Record) (*Revocation, string) {
	rv, why := c.revocation(r.Token)
	if rv == nil {
		return nil, why
	}
	return c.stoppedInTime(r, rv)
}

func (c *checker) stoppedInTime(r *Record, rv *Revocation) (*Revocation, string) {
	stop := r.Stop()
	if limit := rv.By + int64(c.run.TTL); stop == 0 || stop > limit {
		return nil, fmt.Sprintf("etcd revoked its renewed lease, but its holder stopped only %v after the deletion was seen, more than the TTL",
			time.Duration(stop-rv.By))
	}
	return rv, ""
}

func fmtAt(t int64) string { return fmt.Sprintf("%.3fs", float64(t)/1e9) }

// Evidence renders the revocation for the report, one line per fact.
func (rv *Revocation) Evidence() []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	after := "an unknown time"
	if rv.After != 0 {
		after = fmt.Sprintf("%s (%s)", fmtAt(rv.After), rv.AfterWhat)
	}
	add("key %s (%s, token %d, lease %s) deleted at revision %d, after %s and by %s (%s)",
		rv.Key, rv.Node, rv.Token, rv.Lease, rv.Rev, after, fmtAt(rv.By), rv.ByWhat)
	add("not by a client: no worker sent a deletion of the key or a revocation of lease %s that could take effect before %s", rv.Lease, fmtAt(rv.By))
	ttl := time.Duration(rv.Renewal.TTL) * time.Second
	add("last acknowledged renewal of lease %s: %s sent at %s, acknowledged at %s by %s (raft term %d), TTL %v: etcd could not rightly expire the lease before %s, %v after the deletion was seen",
		rv.Lease, rv.Renewal.Op, fmtAt(rv.Renewal.Sent), fmtAt(rv.Renewal.Acked), orUnknown(rv.Renewal.Via), rv.Renewal.Term, ttl,
		fmtAt(rv.Renewal.Sent+int64(ttl)), time.Duration(rv.Renewal.Sent+int64(ttl)-rv.By))
	if rv.Renewed != 0 {
		add("microlock's last Renewed event of the hold: %s (when its hook ran, after the acknowledgement)", fmtAt(rv.Renewed))
	} else {
		add("microlock's last Renewed event of the hold: none before the deletion was seen")
	}
	add("fault: %s of %s from %s to %s (%v)", rv.Fault.Kind, rv.Fault.Target, fmtAt(rv.Fault.Start), fmtAt(rv.Fault.Heal), fmtDur(rv.Fault.Duration()))
	if len(rv.During) == 0 {
		add("renewals of lease %s acknowledged during the fault: none", rv.Lease)
	} else {
		var parts []string
		for _, op := range rv.During {
			parts = append(parts, fmt.Sprintf("%s→%s by %s, term %d", fmtAt(op.Sent), fmtAt(op.Acked), orUnknown(op.Via), op.Term))
		}
		add("renewals of lease %s acknowledged during the fault (sent→acknowledged): %s", rv.Lease, strings.Join(parts, "; "))
	}
	var keys []string
	for _, b := range rv.Burst {
		role := "waiting"
		if b.Held {
			role = "holding"
		}
		lease := b.Lease
		if lease == "" {
			lease = "lease unknown"
		}
		keys = append(keys, fmt.Sprintf("%d %s (%s, %s)", b.Rev, orUnknown(b.Node), role, lease))
	}
	add("deleted in a row: %d lock key(s): %s", len(rv.Burst), strings.Join(keys, ", "))
	if rv.Holder != "" {
		add("the hold: %s", rv.Holder)
	}
	if len(rv.Logs) == 0 {
		add("member logs: no line about leaders or leases around it")
	} else {
		add("member logs around it:")
		const maxLines = 40
		for i, l := range rv.Logs {
			if i == maxLines {
				add("  … %d more lines", len(rv.Logs)-i)
				break
			}
			add("  %s %s %s: %s", fmtAt(l.At), l.Member, l.Level, l.Text)
		}
	}
	return out
}
