package chaos

import (
	"cmp"
	"slices"
	"time"
)

// ShortLeader is the short profile of the leader variant: the two faults
// that surely depose a leader, its worker cut off or paused, with a fixed
// seed, so that the variant adds about 30 s to go test. Its full profile,
// Full, injects every kind.
func ShortLeader() Profile {
	p := Short()
	p.Faults = []Kind{WorkerPartition, WorkerPause}
	return p
}

// The leader variant's own checks. Its workers run microlock.Lead: one
// Record per term, its Call the moment the worker went back to the queue.
const (
	// CheckTermNoKey: a term started without its key: the term's token is
	// not the create revision of a key of its own worker that became the
	// oldest in the queue, or the read at the term's start found the key
	// gone before any loss signal came (etcd issue #19597).
	CheckTermNoKey = "term without a key"
	// CheckRecampaign: a lost term after which the worker did not go back
	// to the queue (no write of a new queue key) within TTL + LivenessSlack.
	CheckRecampaign = "lost term not re-campaigned"
)

// What a leader's read of its own key at the start of a term found.
const (
	KeyHeld    = "held"
	KeyMissing = "missing"
	KeyUnknown = "unknown"
)

// leader runs the leader variant's checks and measures the time from each
// fault that deposed a leader to the next leader.
func (c *checker) leader() {
	if c.run.Variant != Leader {
		return
	}
	for i := range c.run.Records {
		r := &c.run.Records[i]
		if r.Acq == 0 {
			continue
		}
		c.res.Terms++
		c.termKey(r)
		if r.Lost != 0 {
			c.res.TermsLost++
			c.recampaign(r)
		}
	}
	c.toLeader()
}

// termKey checks that r's term had its key.
func (c *checker) termKey(r *Record) {
	k := c.keys[r.Token]
	switch {
	case k == nil || k.node != r.Node || k.head == 0:
		c.add(CheckTermNoKey, r.Acq, 1, "", "%s#%d led with token %d, which is no queue key of its own that became the oldest",
			r.Node, r.Seq, r.Token)
	case r.KeyCheck == KeyMissing && (r.Lost == 0 || r.Lost > r.KeyChecked):
		c.add(CheckTermNoKey, r.Acq, 1, c.pausedHolder(r), "%s#%d (token %d) found its key gone at the start of its term, with no loss signal before",
			r.Node, r.Seq, r.Token)
	}
}

// recampaign checks that the worker of a lost term wrote a new queue key
// after the loss: Lead campaigned again.
func (c *checker) recampaign(r *Record) {
	limit := r.Lost + int64(c.run.TTL+LivenessSlack)
	for _, op := range c.ops[r.Node] {
		if op.Op == OpPut && op.Sent >= r.Lost {
			c.res.TermsRecampaigned++
			return
		}
	}
	if limit >= c.run.End {
		c.res.TermsLost-- // lost too near the end to tell
		return
	}
	c.add(CheckRecampaign, r.Lost, 1, "", "%s#%d (token %d) lost its term and wrote no new queue key in the %v after",
		r.Node, r.Seq, r.Token, c.run.TTL+LivenessSlack)
}

// toLeader measures, for each fault during which a term was lost, the time
// from the fault to the first term of a later leader: the first
// acquisition after the fault with a higher token than the deposed term's.
// A paused leader hears of its loss only on waking, long after the next
// leader took over: the takeover, not the loss signal, ends the wait.
func (c *checker) toLeader() {
	var lost, terms []*Record
	for i := range c.run.Records {
		r := &c.run.Records[i]
		if r.Acq == 0 {
			continue
		}
		terms = append(terms, r)
		if r.Lost != 0 {
			lost = append(lost, r)
		}
	}
	slices.SortFunc(lost, func(a, b *Record) int { return cmp.Compare(a.Lost, b.Lost) })
	for i, f := range c.run.Faults {
		end := c.run.End
		if i+1 < len(c.run.Faults) {
			end = c.run.Faults[i+1].Start
		}
		j, _ := slices.BinarySearchFunc(lost, f.Start, func(r *Record, t int64) int { return cmp.Compare(r.Lost, t) })
		if j == len(lost) || lost[j].Lost >= end {
			continue // no leader was deposed
		}
		var next int64
		for _, r := range terms {
			if r.Token > lost[j].Token && r.Acq > f.Start && (next == 0 || r.Acq < next) {
				next = r.Acq
			}
		}
		if next != 0 {
			c.res.ToLeader = append(c.res.ToLeader, time.Duration(next-f.Start))
		}
	}
}
