package main

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"strings"
)

// The benchmarks the table reads, as named by ./internal/bench.
const (
	floorTxnDelete = "BenchmarkFloor/TxnDelete"
	floorTxn       = "BenchmarkFloor/Txn"
	floorGet       = "BenchmarkFloor/Get"
	cycleWithLock  = "BenchmarkUncontended/microlock/WithLock"
	cycleMutex     = "BenchmarkUncontended/microlock/Mutex"
	cycleSession   = "BenchmarkUncontended/etcd/Session"
	cycleNewSess   = "BenchmarkUncontended/etcd/NewSession"
	tryMicrolock   = "BenchmarkTryLockFail/microlock"
	tryEtcd        = "BenchmarkTryLockFail/etcd"
	authCycle      = "BenchmarkAuth/cycle"
	authRenew      = "BenchmarkAuth/renew"
)

func contention(c int, lib string) string { return fmt.Sprintf("BenchmarkContention/C=%d/%s", c, lib) }
func keys(k int) string                   { return fmt.Sprintf("BenchmarkKeys/K=%d", k) }
func held(n int, lib string) string       { return fmt.Sprintf("BenchmarkHeld/N=%d/%s", n, lib) }
func authC2(side string) string           { return "BenchmarkAuth/C=2/" + side }

// row is one line of the table. result is PASS or FAIL for a target, empty
// for a figure shown for reference, "n/a" when a number is missing.
type row struct {
	measure, microlock, etcd, floor, ratio, target, result string
}

// table builds the rows from results.
type table struct {
	r    *results
	rows []row
	// unbounded is set when a ratio is shown without an interval, and why
	// is benchmath's reason, if it gave one.
	unbounded bool
	why       string
}

// est is a figure with its confidence interval: a median and the bounds
// benchmath gives it, or a figure computed from such. The bounds are
// infinite when there are too few samples for an interval, and warn then
// says how many it needs.
type est struct {
	v, lo, hi float64
	warn      string
}

// div is the ratio of two figures. Its interval is the ratio of their
// intervals' bounds, a's low ÷ b's high and a's high ÷ b's low: the widest
// ratio the two intervals allow. It holds the true ratio whenever both hold
// their true figures, so at 95% each its confidence is at least 90% (by the
// union bound, with no assumption of independence); it is conservative, not
// a fitted interval for the ratio.
func (a est) div(b est) est {
	return est{a.v / b.v, a.lo / b.hi, a.hi / b.lo, cmp.Or(a.warn, b.warn)}
}

// plus is the sum of two figures, its interval the sum of their bounds (at
// least 90% confident, as for div).
func (a est) plus(b est) est {
	return est{a.v + b.v, a.lo + b.lo, a.hi + b.hi, cmp.Or(a.warn, b.warn)}
}

// over is k ÷ a, for a rate from a time: the bounds swap.
func (a est) over(k float64) est {
	return est{k / a.v, k / a.hi, k / a.lo, a.warn}
}

// est is a median with its confidence interval, NaN when the benchmark did
// not run.
func (t *table) est(name, unit string) est {
	s, _, ok := t.r.summary(name, unit)
	if !ok {
		return est{math.NaN(), math.NaN(), math.NaN(), ""}
	}
	e := est{v: s.Center, lo: s.Lo, hi: s.Hi}
	if len(s.Warnings) > 0 {
		e.warn = s.Warnings[0].Error()
	}
	return e
}

// val is a median, or NaN when the benchmark did not run.
func (t *table) val(name, unit string) float64 { return t.est(name, unit).v }

// us is a benchmark's time per op in µs.
func (t *table) us(name string) float64 { return t.usEst(name).v }

// usEst is us with its interval.
func (t *table) usEst(name string) est {
	e := t.est(name, "ns/op")
	return est{e.v / 1e3, e.lo / 1e3, e.hi / 1e3, e.warn}
}

func (t *table) add(r row) { t.rows = append(t.rows, r) }

// target is a ratio's goal: at most or at least a bound.
type target struct {
	atMost bool
	bound  float64
	text   string
}

func atMost(x float64, what string) target {
	return target{atMost: true, bound: x, text: "≤ " + num(x) + "×" + what}
}

func atLeast(x float64, what string) target {
	return target{bound: x, text: "≥ " + num(x) + "×" + what}
}

func (g target) judge(ratio float64) string {
	switch {
	case math.IsNaN(ratio):
		return "n/a"
	case g.atMost && ratio <= g.bound, !g.atMost && ratio >= g.bound:
		return "PASS"
	}
	return "FAIL"
}

// num formats a figure with three significant digits or so.
func num(v float64) string {
	switch a := math.Abs(v); {
	case math.IsNaN(v):
		return "—"
	case math.IsInf(v, 0):
		return "∞"
	case a >= 100 || a == math.Trunc(a) && a < 1e6:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// factor formats a ratio, without its "×".
func factor(v float64) string {
	if math.IsInf(v, 0) || math.IsNaN(v) || math.Abs(v) >= 10 {
		return num(v)
	}
	return fmt.Sprintf("%.2f", v)
}

// ratio formats a ratio and its interval (see est.div), as "1.06× [1.02,
// 1.10]": "[—]" when the interval is unbounded, "—" alone when the ratio
// could not be computed.
func (t *table) ratio(e est) string {
	if math.IsNaN(e.v) {
		return "—"
	}
	if bad := func(x float64) bool { return math.IsNaN(x) || math.IsInf(x, 0) }; bad(e.lo) || bad(e.hi) {
		t.unbounded = true
		t.why = cmp.Or(t.why, e.warn)
		return factor(e.v) + "× [—]"
	}
	return fmt.Sprintf("%s× [%s, %s]", factor(e.v), factor(e.lo), factor(e.hi))
}

func (t *table) build() {
	const cyc, try = "BenchmarkSideBySide/cycle", "BenchmarkSideBySide/trylock"
	t.add(row{measure: "Floor, alone: put-if-absent Txn + Delete (µs)", floor: num(t.us(floorTxnDelete))})
	t.add(row{measure: "Floor, alone: one write Txn (µs)", floor: num(t.us(floorTxn))})
	t.add(row{measure: "Floor, alone: one linearizable Get (µs)", floor: num(t.us(floorGet))})

	// Uncontended cycle, from the benchmark that runs them in turn.
	floor := t.est(cyc, "floor-us")
	wl, mu := t.est(cyc, "WithLock-us"), t.est(cyc, "Mutex-us")
	sess, ns := t.est(cyc, "etcd-Session-us"), t.est(cyc, "etcd-NewSession-us")
	g := atMost(1.10, " floor")
	t.add(row{"Uncontended cycle in turn (µs): WithLock; etcd: Session reused", num(wl.v), num(sess.v), num(floor.v), t.ratio(wl.div(floor)), g.text, g.judge(wl.div(floor).v)})
	t.add(row{measure: "… etcd, Session reused ÷ floor (1.06× where targets were set)", etcd: num(sess.v), floor: num(floor.v), ratio: t.ratio(sess.div(floor))})
	t.add(row{measure: "… etcd, new Session per cycle ÷ floor (2.45× there)", etcd: num(ns.v), floor: num(floor.v), ratio: t.ratio(ns.div(floor))})
	t.add(row{measure: "… microlock Mutex.Lock+Unlock ÷ floor", microlock: num(mu.v), floor: num(floor.v), ratio: t.ratio(mu.div(floor))})
	rq := t.est(cyc, "requests-us")
	t.add(row{measure: "… microlock's two requests sent by hand ÷ floor", microlock: num(rq.v), floor: num(floor.v), ratio: t.ratio(rq.div(floor))})
	t.add(row{measure: "Uncontended cycle alone (µs): WithLock; etcd: Session reused", microlock: num(t.us(cycleWithLock)), etcd: num(t.us(cycleSession)), floor: num(t.us(floorTxnDelete))})
	t.add(row{measure: "Uncontended cycle alone (µs): Mutex; etcd: new Session per cycle", microlock: num(t.us(cycleMutex)), etcd: num(t.us(cycleNewSess)), floor: num(t.us(floorTxnDelete))})
	for _, c := range []struct{ what, ml, etcd string }{
		{"WithLock; etcd: Session reused", cycleWithLock, cycleSession},
		{"Mutex; etcd: new Session per cycle", cycleMutex, cycleNewSess},
	} {
		t.add(row{
			measure:   "Allocations per cycle, " + c.what + " (allocs/op, B/op)",
			microlock: num(t.val(c.ml, "allocs/op")) + ", " + num(t.val(c.ml, "B/op")),
			etcd:      num(t.val(c.etcd, "allocs/op")) + ", " + num(t.val(c.etcd, "B/op")),
			floor:     num(t.val(floorTxnDelete, "allocs/op")) + ", " + num(t.val(floorTxnDelete, "B/op")),
		})
	}
	growth := func(name string) est { return t.est(name, "late-allocs/op").div(t.est(name, "early-allocs/op")) }
	g = atMost(1.05, "")
	for _, c := range []struct{ what, ml, etcd string }{
		{"WithLock; etcd: Session reused", cycleWithLock, cycleSession},
		{"Mutex; etcd: new Session per cycle", cycleMutex, cycleNewSess},
	} {
		t.add(row{
			measure:   "Alloc growth, " + c.what + ": 2nd-half ÷ 1st-half allocs/cycle",
			microlock: t.ratio(growth(c.ml)), etcd: t.ratio(growth(c.etcd)),
			ratio: t.ratio(growth(c.ml)), target: g.text + " (no growth)", result: g.judge(growth(c.ml).v),
		})
		t.add(row{
			measure:   "… 2nd half: heap growth per cycle (B), goroutines per cycle",
			microlock: num(t.val(c.ml, "late-heap-B/op")) + ", " + num(t.val(c.ml, "late-goroutines/op")),
			etcd:      num(t.val(c.etcd, "late-heap-B/op")) + ", " + num(t.val(c.etcd, "late-goroutines/op")),
		})
	}
	const gr = "BenchmarkGrowth"
	gm := t.est(gr, "microlock-last-us").div(t.est(gr, "microlock-first-us"))
	ge := t.est(gr, "etcd-last-us").div(t.est(gr, "etcd-first-us"))
	g = atMost(1.10, "")
	t.add(row{
		measure:   fmt.Sprintf("Hot key: cycle time, last ÷ first tenth of %s cycles (µs)", num(t.val(gr, "cycles"))),
		microlock: num(t.val(gr, "microlock-last-us")) + " ÷ " + num(t.val(gr, "microlock-first-us")),
		etcd:      num(t.val(gr, "etcd-last-us")) + " ÷ " + num(t.val(gr, "etcd-first-us")),
		ratio:     t.ratio(gm) + " / " + t.ratio(ge),
	})
	rg := t.est(gr, "relative-growth")
	t.add(row{
		measure: "… microlock's growth ÷ etcd's (etcd's key never changes: the control)",
		ratio:   t.ratio(rg), target: g.text + " (no growth)", result: g.judge(rg.v),
	})

	// TryLock failure, in turn with etcd's and a one-Txn floor.
	tm, te := t.est(try, "microlock-us"), t.est(try, "etcd-us")
	g = atMost(0.6, " etcd")
	t.add(row{"TryLock on a held key in turn (µs); floor: one write Txn", num(tm.v), num(te.v), num(t.val(try, "txn-us")), t.ratio(tm.div(te)), g.text, g.judge(tm.div(te).v)})
	t.add(row{measure: "TryLock on a held key alone (µs); floor: one write Txn", microlock: num(t.us(tryMicrolock)), etcd: num(t.us(tryEtcd)), floor: num(t.us(floorTxn))})

	// Contention. The two-request floor of a handoff: the holder's release
	// (one write Txn) and the next holder learning that it holds the lock
	// (a linearizable Get's round trip), both measured alone in this run.
	txnGet := t.usEst(floorTxn).plus(t.usEst(floorGet))
	for _, c := range []int{2, 8, 32} {
		ml, et := contention(c, "microlock"), contention(c, "etcd")
		hm, he := t.est(ml, "handoffs/s"), t.est(et, "handoffs/s")
		r := row{measure: fmt.Sprintf("Contention C=%d: handoffs/s", c), microlock: num(hm.v), etcd: num(he.v), ratio: t.ratio(hm.div(he))}
		if c <= 8 {
			g := atLeast(10, " etcd")
			r.target, r.result = g.text, g.judge(hm.div(he).v)
		}
		t.add(r)
		if c == 8 {
			hf := txnGet.over(1e6)
			g := atLeast(0.55, " floor")
			t.add(row{"… ÷ two-request floor, handoffs/s: 1 ÷ (write Txn + linearizable Get)", num(hm.v), "", num(hf.v), t.ratio(hm.div(hf)), g.text, g.judge(hm.div(hf).v)})
		}
		t.add(row{
			measure:   "… handoff latency p50 / p99 (ms)",
			microlock: num(t.val(ml, "p50-ms")) + " / " + num(t.val(ml, "p99-ms")),
			etcd:      num(t.val(et, "p50-ms")) + " / " + num(t.val(et, "p99-ms")),
		})
		fm := t.est(ml, "max/min")
		g := atMost(1.1, "")
		t.add(row{"… fairness: most ÷ fewest acquisitions", t.ratio(fm), t.ratio(t.est(et, "max/min")), "", t.ratio(fm), g.text, g.judge(fm.v)})
	}
	c8, own := t.est(contention(8, "microlock"), "handoffs/s"), mu.over(1e6)
	t.add(row{measure: "C=8 handoffs/s ÷ uncontended Mutex cycles/s (in turn)", microlock: num(c8.v) + " ÷ " + num(own.v), ratio: t.ratio(c8.div(own))})

	// Independent keys.
	for _, k := range []int{16, 256} {
		km, ke := t.est(keys(k), "microlock-cycles/s"), t.est(keys(k), "etcd-cycles/s")
		g := atLeast(0.9, " etcd")
		t.add(row{fmt.Sprintf("Independent keys K=%d on one client, in turn: cycles/s", k), num(km.v), num(ke.v), "", t.ratio(km.div(ke)), g.text, g.judge(km.div(ke).v)})
		kr := t.est(keys(k), "requests-cycles/s")
		g = atLeast(0.95, " by hand")
		t.add(row{"… ÷ microlock's two requests sent by hand (floor column), no library code", num(km.v), "", num(kr.v), t.ratio(km.div(kr)), g.text, g.judge(km.div(kr).v)})
		t.add(row{measure: "… the requests by hand ÷ etcd's cycles/s", etcd: num(ke.v), floor: num(kr.v), ratio: t.ratio(kr.div(ke))})
		cm, ce := t.est(keys(k), "microlock-cpu-us/cycle"), t.est(keys(k), "etcd-cpu-us/cycle")
		t.add(row{measure: "… client CPU per cycle (µs)", microlock: num(cm.v), etcd: num(ce.v), ratio: t.ratio(cm.div(ce))})
		sm, se := t.est(keys(k), "microlock-etcd-cpu-us/cycle"), t.est(keys(k), "etcd-etcd-cpu-us/cycle")
		t.add(row{measure: "… etcd server CPU per cycle (µs)", microlock: num(sm.v), etcd: num(se.v), ratio: t.ratio(sm.div(se))})
	}

	// Authentication: microlock with a password user ÷ without, each on an
	// etcd of its own. For reference: no target.
	for _, a := range []struct{ what, name, per string }{
		{"Mutex.Lock+Unlock", authCycle, "cycle"},
		{"Mutex.Renew of a held lock", authRenew, "renewal"},
	} {
		on, off := t.est(a.name, "auth-us"), t.est(a.name, "noauth-us")
		t.add(row{measure: "Auth on ÷ off, in turn: " + a.what + " (µs)", microlock: num(on.v) + " ÷ " + num(off.v), ratio: t.ratio(on.div(off))})
		t.add(row{
			measure:   "… Authenticate calls per " + a.per + "; etcd CPU per " + a.per + ", on ÷ off (µs)",
			microlock: num(t.val(a.name, "auth-authenticate/op")) + "; " + num(t.val(a.name, "auth-etcd-cpu-us")) + " ÷ " + num(t.val(a.name, "noauth-etcd-cpu-us")),
		})
	}
	on, off := t.est(authC2("auth"), "handoffs/s"), t.est(authC2("noauth"), "handoffs/s")
	t.add(row{measure: "Auth on ÷ off: contention C=2, handoffs/s", microlock: num(on.v) + " ÷ " + num(off.v), ratio: t.ratio(on.div(off))})
	t.add(row{
		measure:   "… Authenticate calls per handoff; etcd CPU per handoff, on ÷ off (µs)",
		microlock: num(t.val(authC2("auth"), "authenticate/op")) + "; " + num(t.val(authC2("auth"), "etcd-cpu-us/op")) + " ÷ " + num(t.val(authC2("noauth"), "etcd-cpu-us/op")),
	})

	// Held locks.
	const few, many = 1000, 10000
	kaFew, kaMany := t.est(held(few, "microlock"), "keepalives/s"), t.est(held(many, "microlock"), "keepalives/s")
	for _, n := range []int{few, many} {
		r := row{
			measure:   fmt.Sprintf("Held N=%d for %ss: keepalive messages/s", n, num(t.val(held(n, "microlock"), "hold-s"))),
			microlock: num(t.val(held(n, "microlock"), "keepalives/s")),
			etcd:      num(t.val(held(n, "etcd"), "keepalives/s")),
		}
		if n == many {
			g := atMost(1.25, " at N=1000")
			r.ratio, r.target, r.result = t.ratio(kaMany.div(kaFew)), g.text+" (per lease, not per lock)", g.judge(kaMany.div(kaFew).v)
		}
		t.add(r)
	}
	for _, n := range []int{few, many} {
		cm, ce := t.est(held(n, "microlock"), "cpu-ms/s"), t.est(held(n, "etcd"), "cpu-ms/s")
		r := row{measure: fmt.Sprintf("Held N=%d: client CPU (ms per s)", n), microlock: num(cm.v), etcd: num(ce.v), ratio: t.ratio(cm.div(ce))}
		if n == many {
			g := atMost(0.2, " etcd")
			r.target, r.result = g.text, g.judge(cm.div(ce).v)
		}
		t.add(r)
	}
	for _, n := range []int{few, many} {
		hm, he := t.est(held(n, "microlock"), "heap-B/lock"), t.est(held(n, "etcd"), "heap-B/lock")
		g := atMost(1.0, " etcd")
		t.add(row{fmt.Sprintf("Held N=%d: heap in use per held lock (B)", n), num(hm.v), num(he.v), "", t.ratio(hm.div(he)), g.text, g.judge(hm.div(he).v)})
		rm, re := t.est(held(n, "microlock"), "rss-B/lock"), t.est(held(n, "etcd"), "rss-B/lock")
		t.add(row{measure: "… resident set per held lock (B)", microlock: num(rm.v), etcd: num(re.v), ratio: t.ratio(rm.div(re))})
		t.add(row{measure: "… goroutines per held lock", microlock: num(t.val(held(n, "microlock"), "goroutines/lock")), etcd: num(t.val(held(n, "etcd"), "goroutines/lock"))})
	}
	lm := t.val(held(few, "microlock"), "lost") + t.val(held(many, "microlock"), "lost")
	le := t.val(held(few, "etcd"), "lost") + t.val(held(many, "etcd"), "lost")
	lost := "n/a"
	if !math.IsNaN(lm) {
		lost = "PASS"
		if lm != 0 {
			lost = "FAIL"
		}
	}
	t.add(row{measure: "Held: locks lost (N=1000 and 10000)", microlock: num(lm), etcd: num(le), target: "0", result: lost})

	t.buildAdmission()
}

// render writes the table in Markdown, with the run's particulars above it.
func render(w io.Writer, r *results) {
	t := &table{r: r}
	t.build()
	fmt.Fprintf(w, "microlock vs etcd concurrency.Mutex vs raw etcd\n")
	for _, k := range []string{"cpu", "goos", "goarch", "etcd"} {
		if v := r.header[k]; v != "" {
			fmt.Fprintf(w, "%s: %s\n", k, v)
		}
	}
	if r.procs != "" {
		fmt.Fprintf(w, "GOMAXPROCS: %s\n", r.procs)
	}
	_, n, _ := r.median("BenchmarkSideBySide/cycle", "ns/op")
	fmt.Fprintf(w, "Each figure is the median of %d run(s) of its benchmark; times vary from machine to machine and run to run, ratios less.\n", n)
	fmt.Fprintf(w, "Each ratio of medians is shown with an interval: the ratio of the bounds of the medians' %.0f%% confidence intervals (numerator's low ÷ denominator's high, and high ÷ low), so at least %.0f%% confident.\n", 100*confidence, 100*(1-2*(1-confidence)))
	if t.unbounded {
		fmt.Fprintf(w, "[—]: too few runs for an interval")
		if t.why != "" {
			fmt.Fprintf(w, " (%s)", t.why)
		}
		fmt.Fprintln(w, ".")
	}
	fmt.Fprintln(w)

	head := row{"Measure", "microlock", "etcd", "floor", "ratio", "target", "result"}
	all := append([]row{head}, t.rows...)
	width := make([]int, 7)
	for _, r := range all {
		for i, c := range r.cells() {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	line := func(cells []string) {
		for i, c := range cells {
			pad := width[i] - len([]rune(c))
			if i == 0 {
				fmt.Fprintf(w, "| %s%s ", c, strings.Repeat(" ", pad))
			} else {
				fmt.Fprintf(w, "| %s%s ", strings.Repeat(" ", pad), c)
			}
		}
		fmt.Fprintln(w, "|")
	}
	line(head.cells())
	sep := make([]string, 7)
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	fmt.Fprintf(w, "|-%s-|\n", strings.Join(sep, "-|-"))
	for _, r := range t.rows {
		line(r.cells())
	}
	var pass, fail, na int
	for _, r := range t.rows {
		switch r.result {
		case "PASS":
			pass++
		case "FAIL":
			fail++
		case "n/a":
			na++
		}
	}
	fmt.Fprintf(w, "\nTargets: %d met, %d missed, %d not measured.\n", pass, fail, na)
}

func (r row) cells() []string {
	return []string{r.measure, r.microlock, r.etcd, r.floor, r.ratio, r.target, r.result}
}
