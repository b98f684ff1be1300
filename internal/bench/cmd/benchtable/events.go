package main

// The benchmark of the metrics adapter's cost, as named by
// ./contrib/prometheus (a nested module, so that the root's benchmarks need
// not import the Prometheus client): the uncontended WithLock cycle with no
// hook and with the adapter attached, in turn, in one process.
const (
	eventsNone = "BenchmarkEvents/none"
	eventsProm = "BenchmarkEvents/prometheus"
)

// events adds the rows of what the Prometheus adapter costs an uncontended
// cycle, in time and in allocations. The no-hook cycle's own budget (at
// most 2% over the previous release) is a comparison across commits, which
// benchstat makes, not this table.
func (t *table) events() {
	none, prom := t.usEst(eventsNone), t.usEst(eventsProm)
	g := atMost(1.05, " no hook")
	t.add(row{"Events: WithLock cycle (µs), no hook; with the Prometheus adapter", num(none.v) + "; " + num(prom.v), "", "",
		t.ratio(prom.div(none)), g.text, g.judge(prom.div(none).v)})
	an, ap := t.est(eventsNone, "allocs/op"), t.est(eventsProm, "allocs/op")
	t.add(row{"… allocations per cycle (allocs/op), no hook; with the adapter", num(an.v) + "; " + num(ap.v), "", "",
		t.ratio(ap.div(an)), g.text, g.judge(ap.div(an).v)})
}
