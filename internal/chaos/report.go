package chaos

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Report renders the results of a run as the table that the suite prints
// and writes to a file, followed by the evidence for the violations: at most
// perCheck of each check, variant and verdict, forbidden ones first, then
// every one in CategoryEtcd in full, then the allowed ones.
func Report(p Profile, etcdVersion string, results []*Result, perCheck int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "microlock fault-injection run: profile %s, seed %d\n", p.Name, p.Seed)
	fmt.Fprintf(&b, "%d worker processes, 3 etcd %s members, lock TTL %v; every worker reaches etcd through its own proxies\n\n",
		p.Workers, etcdVersion, p.TTL)
	s := summary{tw: tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight), results: results}
	s.counts()
	s.violations()
	s.pauses()
	s.timings()
	s.tw.Flush()
	writeByKind(&b, results)
	b.WriteString(violationsNote)
	for _, r := range results {
		// Forbidden ones first: they are what a reader needs to see.
		for _, verdict := range []string{"forbidden", "etcd", "allowed"} {
			writeViolations(&b, r, verdict, perCheck)
		}
	}
	return b.String()
}

// summary is the table at the head of a report: one row per figure, one
// column per result.
type summary struct {
	tw      *tabwriter.Writer
	results []*Result
}

func (s summary) row(label string, cell func(r *Result) string) {
	fmt.Fprintf(s.tw, "%s\t", label)
	for _, r := range s.results {
		fmt.Fprintf(s.tw, "%s\t", cell(r))
	}
	fmt.Fprintln(s.tw)
}

// counts: calls, writes, the counter and the faults.
func (s summary) counts() {
	s.row("", func(r *Result) string { return string(r.Variant) })
	s.row("run time", func(r *Result) string { return fmtDur(r.Duration) })
	s.row("WithLock calls / holds", func(r *Result) string { return fmt.Sprintf("%d / %d", r.Calls, r.Holds) })
	s.row("writes attempted", func(r *Result) string { return fmt.Sprint(r.Attempted) })
	s.row("  acknowledged", func(r *Result) string { return fmt.Sprint(r.Acked) })
	s.row("  refused by the fence", func(r *Result) string { return fmt.Sprint(r.Refused) })
	s.row("  no answer (landed anyway)", func(r *Result) string { return fmt.Sprintf("%d (%d)", r.Unknown, r.LandedUnacked) })
	s.row("final counter", func(r *Result) string { return fmt.Sprint(r.Final) })
	s.row("acknowledged + landed unanswered", func(r *Result) string { return fmt.Sprint(r.Acked + r.LandedUnacked) })
	s.row("lost updates (acknowledged)", func(r *Result) string { return fmt.Sprintf("%d (%d)", r.LostIncrements, r.LostAcked) })
	s.row("faults injected (holder caught)", func(r *Result) string { return fmt.Sprint(sum(r.Faults)) })
	for _, k := range Kinds() {
		s.row("  "+string(k), func(r *Result) string {
			if k == WorkerPartition || k == WorkerPause {
				return fmt.Sprintf("%d (%d)", r.Faults[k], r.HoldingFaults[k])
			}
			return fmt.Sprint(r.Faults[k])
		})
	}
}

// violations: the violations of each check, by verdict.
func (s summary) violations() {
	s.row("violations: forbidden / etcd / allowed", func(r *Result) string {
		var forbidden, etcd, allowed int64
		for _, check := range Checks() {
			forbidden += r.Count(check, false)
			etcd += r.CountEtcd(check)
			allowed += r.Count(check, true)
		}
		return fmt.Sprintf("%d / %d / %d", forbidden, etcd, allowed)
	})
	for _, check := range Checks() {
		s.row("  "+check, func(r *Result) string {
			return fmt.Sprintf("%d / %d / %d", r.Count(check, false), r.CountEtcd(check), r.Count(check, true))
		})
	}
}

// pauses: what holders paused by a fault did.
func (s summary) pauses() {
	s.row("holder pauses caught: reading / gap / writing / after", func(r *Result) string {
		n := make(map[string]int)
		for _, p := range r.Pauses {
			n[p.Phase]++
		}
		return fmt.Sprintf("%d / %d / %d / %d", n[PhaseRead], n[PhaseGap], n[PhaseWrite], n[PhaseAfter])
	})
	s.row("  tried to write on waking: landed / refused", func(r *Result) string {
		var wrote, landed, refused int
		for _, p := range r.Pauses {
			if p.Wrote {
				wrote++
				if p.Landed {
					landed++
				}
				if p.Refused {
					refused++
				}
			}
		}
		return fmt.Sprintf("%d: %d / %d", wrote, landed, refused)
	})
}

// timings: how long loss signals and takeovers took.
func (s summary) timings() {
	s.row("fault → loss signal: median / p99 / max", func(r *Result) string { return dist(all(r.ToLoss)) })
	s.row("fault → next acquisition: median / p99 / max", func(r *Result) string { return dist(all(r.ToAcquire)) })
	s.row("leader: terms / lost / re-campaigned", func(r *Result) string {
		if r.Variant != Leader {
			return "-"
		}
		return fmt.Sprintf("%d / %d / %d", r.Terms, r.TermsLost, r.TermsRecampaigned)
	})
	s.row("leader: fault → next leader: median / p99 / max", func(r *Result) string { return dist(r.ToLeader) })
	s.row("loss signal → takeover: min / median", func(r *Result) string {
		if len(r.Margins) == 0 {
			return "-"
		}
		return fmtDur(quantile(r.Margins, 0)) + " / " + fmtDur(quantile(r.Margins, 0.5))
	})
}

// writeByKind writes the timings of each fault kind.
func writeByKind(b *strings.Builder, results []*Result) {
	b.WriteString("\nBy fault kind (n: faults with a loss signal / all): median / p99 / max\n")
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "fault\tvariant\tn\tfault → loss signal\tfault → next acquisition\t")
	for _, k := range Kinds() {
		for _, r := range results {
			if r.Faults[k] == 0 {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t\n", k, r.Variant, len(r.ToLoss[k]), r.Faults[k], dist(r.ToLoss[k]), dist(r.ToAcquire[k]))
		}
	}
	tw.Flush()
}

// violationsNote explains the verdicts, before the evidence.
const violationsNote = "\nForbidden violations fail the run. Allowed, with the evidence checked for each: a worker\n" +
	"paused while it holds the lock cannot hear its loss signal, so the next holder takes over\n" +
	"while it still works (both variants); and in the plain variant an unguarded write that left\n" +
	"its writer while it held the lock can still land after the hold ended, if the writer was\n" +
	"paused or the member it went to was paused. The fenced variant must refuse every such write.\n" +
	"etcd: \"" + CategoryEtcd + "\", listed below in full. A leader\n" +
	"that stalls and resumes can revoke leases renewed through its successor meanwhile (etcd\n" +
	"#12528, #15247); the key watch is then the only loss signal, and it races with the next\n" +
	"holder. Such a case does not fail the run, and is not allowed either: it counts only with\n" +
	"all its evidence (the key deleted by no client's request; a renewal of its lease sent less\n" +
	"than the TTL before the deletion was seen, and acknowledged; a member fault around it; the\n" +
	"holder stopped within a TTL; a plain write, never a fenced one). Otherwise it stays\n" +
	"forbidden, saying which evidence is missing. Times are the suite's clock (CLOCK_MONOTONIC),\n" +
	"as in the records.\n"

// writeViolations writes r's violations of one verdict, at most perCheck of
// each check but for the etcd ones, each with its evidence.
func writeViolations(b *strings.Builder, r *Result, verdict string, perCheck int) {
	shown := make(map[string]int)
	explained := make(map[*Revocation]bool)
	for _, v := range r.Violations {
		switch {
		case verdict == "forbidden" && (v.Allowed || v.Etcd != nil),
			verdict == "etcd" && v.Etcd == nil,
			verdict == "allowed" && !v.Allowed:
			continue
		}
		// Every etcd case is shown: none may hide among the others.
		if shown[v.Check]++; verdict != "etcd" && shown[v.Check] > perCheck {
			continue
		}
		label := "FORBIDDEN"
		switch {
		case v.Allowed:
			label = "allowed: " + v.Excuse
		case v.Etcd != nil:
			label = "etcd: " + CategoryEtcd
		}
		fault := string(v.Fault)
		if fault == "" {
			fault = "no fault"
		}
		fmt.Fprintf(b, "%s: %s (%s; %s): %s\n", r.Variant, v.Check, fault, label, v.Detail)
		if v.Etcd == nil {
			continue
		}
		if explained[v.Etcd] {
			fmt.Fprintf(b, "    (the same revocation as above: key %s at revision %d)\n", v.Etcd.Key, v.Etcd.Rev)
			continue
		}
		explained[v.Etcd] = true
		for _, line := range v.Etcd.Evidence() {
			fmt.Fprintf(b, "    %s\n", line)
		}
	}
	for _, check := range Checks() {
		if n := shown[check]; verdict != "etcd" && n > perCheck {
			fmt.Fprintf(b, "%s: %s: %d more not shown\n", r.Variant, check, n-perCheck)
		}
	}
}

func sum(m map[Kind]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func all(m map[Kind][]time.Duration) []time.Duration {
	var out []time.Duration
	for _, ds := range m {
		out = append(out, ds...)
	}
	return out
}

func dist(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	return fmtDur(quantile(ds, 0.5)) + " / " + fmtDur(quantile(ds, 0.99)) + " / " + fmtDur(quantile(ds, 1))
}

// quantile is the nearest-rank quantile q of ds (0: the minimum).
func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(i, 0)]
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	default:
		return fmt.Sprintf("%dms", d.Milliseconds())
	}
}
