// Package promtext keeps microlock's lock metrics and writes them in the
// Prometheus text format, for the microlock command's --metrics-addr. The
// series are those of the adapter in contrib/prometheus, names, labels and
// buckets alike, so that one dashboard serves both; the command cannot use
// the adapter itself, since the root module must not depend on the
// Prometheus client. contrib/prometheus's tests check that both expose the
// same samples for the same events.
package promtext

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/lockmetrics"
)

// Buckets of the histograms, in seconds: those of contrib/prometheus.
var (
	WaitBuckets    = lockmetrics.WaitBuckets()
	HoldBuckets    = lockmetrics.HoldBuckets()
	LatencyBuckets = lockmetrics.LatencyBuckets()
	MarginBuckets  = lockmetrics.MarginBuckets()
)

// Metrics records events; it is safe for concurrent use. Its zero value is
// not usable: create it with New.
type Metrics struct {
	mu      sync.Mutex
	wait    *histograms // key, result
	hold    *histograms // end, key
	losses  *values     // key, reason
	held    *values     // key
	waiting *values     // key
	latency *histogram
	margin  *histogram
	retries float64
}

// New returns empty metrics.
func New() *Metrics {
	return &Metrics{
		wait: &histograms{series: series{name: "microlock_acquire_wait_seconds", labels: []string{"key", "result"},
			help: "Time Lock waited, by key and result (acquired, locked, canceled, lost, closed, error)."}, buckets: WaitBuckets},
		hold: &histograms{series: series{name: "microlock_hold_seconds", labels: []string{"end", "key"},
			help: "Time a lock was held, by key and how the hold ended (released, lost)."}, buckets: HoldBuckets},
		losses: &values{series: series{name: "microlock_losses_total", labels: []string{"key", "reason"},
			help: "Holds that ended without Unlock, by key and reason."}, typ: "counter"},
		held: &values{series: series{name: "microlock_held", labels: []string{"key"},
			help: "Locks held now, by key."}, typ: "gauge"},
		waiting: &values{series: series{name: "microlock_waiting", labels: []string{"key"},
			help: "Lock calls queued behind a holder now, by key."}, typ: "gauge"},
		latency: newHistogram(LatencyBuckets),
		margin:  newHistogram(MarginBuckets),
	}
}

// Observe records one event; pass it to microlock.OnEvent.
func (m *Metrics) Observe(ev microlock.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	lockmetrics.Observe((*recorder)(m), ev, func(k string) string { return k })
}

// recorder is Metrics as a lockmetrics.Recorder; its methods run with mu
// held.
type recorder Metrics

func (r *recorder) Wait(key, result string, s float64) { r.wait.observe(s, key, result) }
func (r *recorder) Hold(key, end string, s float64)    { r.hold.observe(s, end, key) }
func (r *recorder) Loss(key, reason string)            { r.losses.add(1, key, reason) }
func (r *recorder) Retry()                             { r.retries++ }
func (r *recorder) Held(key string, d int64)           { r.held.add(float64(d), key) }
func (r *recorder) Waiting(key string, d int64)        { r.waiting.add(float64(d), key) }
func (r *recorder) Renewal(latency, margin float64) {
	r.latency.observe(latency)
	r.margin.observe(margin)
}

// ServeHTTP writes the metrics, for a scrape.
func (m *Metrics) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	_, _ = m.WriteTo(w)
}

// WriteTo writes the metrics in the Prometheus text format, families in
// name order and series in label order, as the Prometheus client does. A
// family with labels appears once it has a series.
func (m *Metrics) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	m.mu.Lock()
	m.wait.write(&b)
	m.held.write(&b)
	m.hold.write(&b)
	m.losses.write(&b)
	writeHistogram(&b, "microlock_renew_latency_seconds", "Round trip of a lease renewal, once per hold on the lease.", "", m.latency)
	writeHistogram(&b, "microlock_renew_margin_seconds", "Time left before the loss deadline when a renewal was acknowledged, once per hold on the lease.", "", m.margin)
	fmt.Fprintf(&b, "# HELP microlock_retries_total Transient etcd errors retried while acquiring, releasing or renewing.\n"+
		"# TYPE microlock_retries_total counter\nmicrolock_retries_total %s\n", formatFloat(m.retries))
	m.waiting.write(&b)
	m.mu.Unlock()
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// series are the label sets of a metric with labels, whose names are
// sorted, as the text format lists them.
type series struct {
	name, help string
	labels     []string
	ids        map[string][]string // the joined label values → the values
}

// id returns the series of values, adding it if it is new.
func (s *series) id(values []string) string {
	id := strings.Join(values, "\xff")
	if _, ok := s.ids[id]; !ok {
		if s.ids == nil {
			s.ids = make(map[string][]string)
		}
		s.ids[id] = values
	}
	return id
}

// sorted returns the series in the order of their label values.
func (s *series) sorted() []string {
	ids := make([]string, 0, len(s.ids))
	for id := range s.ids {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

func (s *series) labelText(id string) string {
	var b strings.Builder
	for i, l := range s.labels {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `%s="%s"`, l, escape(s.ids[id][i]))
	}
	return b.String()
}

// values is a counter or gauge with labels.
type values struct {
	series
	typ string
	v   map[string]float64
}

func (f *values) add(d float64, labels ...string) {
	if f.v == nil {
		f.v = make(map[string]float64)
	}
	f.v[f.id(labels)] += d
}

func (f *values) write(b *strings.Builder) {
	if len(f.v) == 0 {
		return
	}
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", f.name, f.help, f.name, f.typ)
	for _, id := range f.sorted() {
		fmt.Fprintf(b, "%s{%s} %s\n", f.name, f.labelText(id), formatFloat(f.v[id]))
	}
}

// histograms is a histogram with labels.
type histograms struct {
	series
	buckets []float64
	h       map[string]*histogram
}

func (f *histograms) observe(v float64, labels ...string) {
	id := f.id(labels)
	h := f.h[id]
	if h == nil {
		if f.h == nil {
			f.h = make(map[string]*histogram)
		}
		h = newHistogram(f.buckets)
		f.h[id] = h
	}
	h.observe(v)
}

func (f *histograms) write(b *strings.Builder) {
	if len(f.h) == 0 {
		return
	}
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s histogram\n", f.name, f.help, f.name)
	for _, id := range f.sorted() {
		writeSeries(b, f.name, f.labelText(id), f.h[id])
	}
}

type histogram struct {
	upper  []float64
	counts []uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	count  uint64
}

func newHistogram(upper []float64) *histogram {
	return &histogram{upper: upper, counts: make([]uint64, len(upper)+1)}
}

func (h *histogram) observe(v float64) {
	i, _ := slices.BinarySearch(h.upper, v) // the first bound >= v: buckets are "le"
	h.counts[i]++
	h.sum += v
	h.count++
}

func writeHistogram(b *strings.Builder, name, help, labels string, h *histogram) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name)
	writeSeries(b, name, labels, h)
}

func writeSeries(b *strings.Builder, name, labels string, h *histogram) {
	sep := ""
	if labels != "" {
		sep = ","
	}
	var cum uint64
	for i, c := range h.counts {
		cum += c
		le := "+Inf"
		if i < len(h.upper) {
			le = formatFloat(h.upper[i])
		}
		fmt.Fprintf(b, "%s_bucket{%s%sle=\"%s\"} %d\n", name, labels, sep, le, cum)
	}
	braces := func(s string) string {
		if s == "" {
			return ""
		}
		return "{" + s + "}"
	}
	fmt.Fprintf(b, "%s_sum%s %s\n%s_count%s %d\n", name, braces(labels), formatFloat(h.sum), name, braces(labels), h.count)
}

func formatFloat(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// escape escapes a label value as the text format wants.
func escape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}
