// Package prometheus records microlock's lock events as Prometheus metrics:
// how long work waits for a lock, how long it holds it, how often and why a
// lock is lost, and how close renewals come to the loss deadline.
//
// It lives in a module of its own, so that microlock itself does not depend
// on the Prometheus client. Make one Metrics, register it, and pass its
// Option to every lock it should count:
//
//	m := prometheus.New()
//	registry.MustRegister(m)
//	err := microlock.WithLock(ctx, client, "jobs/report", fn, m.Option())
//
// The series:
//
//	microlock_acquire_wait_seconds{key,result}  histogram: Lock's wait; result is acquired, locked, canceled, lost, closed or error
//	microlock_hold_seconds{key,end}              histogram: how long a lock was held; end is released or lost
//	microlock_losses_total{key,reason}           counter: holds lost, by microlock.LossReason
//	microlock_renew_latency_seconds              histogram: round trip of a lease renewal
//	microlock_renew_margin_seconds               histogram: time left before the loss deadline when a renewal came back
//	microlock_retries_total                      counter: transient etcd errors retried
//	microlock_held{key}                          gauge: locks held now
//	microlock_waiting{key}                       gauge: Lock calls queued now
//
// A renewal renews a lease that every hold of one client and TTL shares: it
// is observed once per hold, and so is a retried renewal. Keys that carry IDs ("jobs/42") make one series
// each; WithKeyLabel maps them to fewer ("jobs/*").
package prometheus

import (
	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/lockmetrics"
)

// Metrics is a prometheus.Collector of microlock's events. Register it once
// and pass Option to the locks it should count; it is safe for concurrent
// use by any number of them.
type Metrics struct {
	keyLabel func(string) string

	wait     *prom.HistogramVec
	hold     *prom.HistogramVec
	losses   *prom.CounterVec
	latency  prom.Histogram
	margin   prom.Histogram
	retries  prom.Counter
	held     *prom.GaugeVec
	waiting  *prom.GaugeVec
	everyone []prom.Collector
}

// An Option configures New.
type Option func(*Metrics)

// WithKeyLabel sets the function that turns a lock's key into its key label,
// to keep the number of series down when keys carry IDs: return "jobs/*"
// for "jobs/42". The default uses the key as it is. f must be fast and safe
// for concurrent use: it runs on every event.
func WithKeyLabel(f func(key string) string) Option {
	return func(m *Metrics) {
		if f != nil {
			m.keyLabel = f
		}
	}
}

// Buckets of the histograms, in seconds; the same in the OpenTelemetry
// adapter and in the microlock command's /metrics.
var (
	// WaitBuckets spans an uncontended acquisition (a millisecond) to a
	// job that waits minutes for its turn.
	WaitBuckets = lockmetrics.WaitBuckets()
	// HoldBuckets spans a short critical section to an hour-long job.
	HoldBuckets = lockmetrics.HoldBuckets()
	// LatencyBuckets spans a renewal's round trip.
	LatencyBuckets = lockmetrics.LatencyBuckets()
	// MarginBuckets spans the time left before the loss deadline: about
	// two thirds of the TTL when renewals are healthy, near zero before a
	// loss.
	MarginBuckets = lockmetrics.MarginBuckets()
)

// New returns a Metrics; register it with a prometheus.Registerer.
func New(opts ...Option) *Metrics {
	m := &Metrics{keyLabel: func(k string) string { return k }}
	for _, o := range opts {
		if o != nil {
			o(m)
		}
	}
	m.wait = prom.NewHistogramVec(prom.HistogramOpts{
		Name:    "microlock_acquire_wait_seconds",
		Help:    "Time Lock waited, by key and result (acquired, locked, canceled, lost, closed, error).",
		Buckets: WaitBuckets,
	}, []string{"key", "result"})
	m.hold = prom.NewHistogramVec(prom.HistogramOpts{
		Name:    "microlock_hold_seconds",
		Help:    "Time a lock was held, by key and how the hold ended (released, lost).",
		Buckets: HoldBuckets,
	}, []string{"key", "end"})
	m.losses = prom.NewCounterVec(prom.CounterOpts{
		Name: "microlock_losses_total",
		Help: "Holds that ended without Unlock, by key and reason.",
	}, []string{"key", "reason"})
	m.latency = prom.NewHistogram(prom.HistogramOpts{
		Name:    "microlock_renew_latency_seconds",
		Help:    "Round trip of a lease renewal, once per hold on the lease.",
		Buckets: LatencyBuckets,
	})
	m.margin = prom.NewHistogram(prom.HistogramOpts{
		Name:    "microlock_renew_margin_seconds",
		Help:    "Time left before the loss deadline when a renewal was acknowledged, once per hold on the lease.",
		Buckets: MarginBuckets,
	})
	m.retries = prom.NewCounter(prom.CounterOpts{
		Name: "microlock_retries_total",
		Help: "Transient etcd errors retried while acquiring, releasing or renewing.",
	})
	m.held = prom.NewGaugeVec(prom.GaugeOpts{
		Name: "microlock_held",
		Help: "Locks held now, by key.",
	}, []string{"key"})
	m.waiting = prom.NewGaugeVec(prom.GaugeOpts{
		Name: "microlock_waiting",
		Help: "Lock calls queued behind a holder now, by key.",
	}, []string{"key"})
	m.everyone = []prom.Collector{m.wait, m.hold, m.losses, m.latency, m.margin, m.retries, m.held, m.waiting}
	return m
}

// Option returns the microlock option that feeds this Metrics. It composes
// with the caller's own OnEvent hooks.
func (m *Metrics) Option() microlock.Option { return microlock.OnEvent(m.Observe) }

// Observe records one event. Option passes it every event of a lock; call
// it yourself from a hook of your own if you prefer.
func (m *Metrics) Observe(ev microlock.Event) {
	lockmetrics.Observe((*recorder)(m), ev, m.keyLabel)
}

// Result names why a Lock returned err, as the result label of
// microlock_acquire_wait_seconds: acquired (nil), locked (NoWait found it
// held), canceled (the caller's context ended), lost (the place in the
// queue was lost), closed (the Mutex was closed) or error (anything else:
// etcd refused, or a retry policy gave up).
func Result(err error) string { return lockmetrics.Result(err) }

// recorder is Metrics as a lockmetrics.Recorder, without those methods in
// Metrics' own API.
type recorder Metrics

func (r *recorder) Wait(key, result string, s float64) {
	r.wait.WithLabelValues(key, result).Observe(s)
}
func (r *recorder) Hold(key, end string, s float64) { r.hold.WithLabelValues(key, end).Observe(s) }
func (r *recorder) Loss(key, reason string)         { r.losses.WithLabelValues(key, reason).Inc() }
func (r *recorder) Retry()                          { r.retries.Inc() }
func (r *recorder) Held(key string, d int64)        { r.held.WithLabelValues(key).Add(float64(d)) }
func (r *recorder) Waiting(key string, d int64)     { r.waiting.WithLabelValues(key).Add(float64(d)) }
func (r *recorder) Renewal(latency, margin float64) {
	r.latency.Observe(latency)
	r.margin.Observe(margin)
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prom.Desc) {
	for _, c := range m.everyone {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prom.Metric) {
	for _, c := range m.everyone {
		c.Collect(ch)
	}
}
