// Package otel records microlock's lock events with the OpenTelemetry metric
// API: how long work waits for a lock, how long it holds it, how often and
// why a lock is lost, and how close renewals come to the loss deadline.
//
// It lives in a module of its own, so that microlock itself does not depend
// on OpenTelemetry. Make one Metrics from the MeterProvider your program
// exports with, and pass its Option to every lock it should count:
//
//	m, err := otel.New(meterProvider)
//	if err != nil { ... }
//	err = microlock.WithLock(ctx, client, "jobs/report", fn, m.Option())
//
// The instruments, named by OpenTelemetry's conventions (seconds as "s",
// attributes under "microlock."), are those of the Prometheus adapter
// (contrib/prometheus):
//
//	microlock.acquire.duration  histogram (s): Lock's wait; microlock.key, microlock.result
//	microlock.hold.duration     histogram (s): how long a lock was held; microlock.key, microlock.end
//	microlock.losses            counter: holds lost; microlock.key, microlock.reason
//	microlock.renew.duration    histogram (s): round trip of a lease renewal
//	microlock.renew.margin      histogram (s): time left before the loss deadline when a renewal came back
//	microlock.retries           counter: transient etcd errors retried
//	microlock.held              up-down counter: locks held now; microlock.key
//	microlock.waiting           up-down counter: Lock calls queued now; microlock.key
//
// microlock.result is acquired, locked, canceled, lost, closed or error;
// microlock.end is released or lost; microlock.reason is a
// microlock.LossReason's String. A renewal renews a lease that every hold of
// one client and TTL shares: it is recorded once per hold, and so is a
// retried renewal. Keys that carry
// IDs ("jobs/42") make one series each; WithKeyAttribute maps them to fewer.
package otel

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/lockmetrics"
)

// ScopeName is the instrumentation scope of the meter the adapter uses.
const ScopeName = "github.com/microlock/microlock/contrib/otel"

// Attribute keys.
const (
	KeyAttr    = attribute.Key("microlock.key")
	ResultAttr = attribute.Key("microlock.result")
	EndAttr    = attribute.Key("microlock.end")
	ReasonAttr = attribute.Key("microlock.reason")
)

// Metrics records microlock's events on OpenTelemetry instruments. It is
// safe for concurrent use by any number of locks.
type Metrics struct {
	keyAttr func(string) string

	wait, hold, latency, margin metric.Float64Histogram
	losses, retries             metric.Int64Counter
	held, waiting               metric.Int64UpDownCounter
}

// An Option configures New.
type Option func(*Metrics)

// WithKeyAttribute sets the function that turns a lock's key into the value
// of the microlock.key attribute, to keep the number of series down when
// keys carry IDs: return "jobs/*" for "jobs/42". The default uses the key as
// it is. f must be fast and safe for concurrent use: it runs on every event.
func WithKeyAttribute(f func(key string) string) Option {
	return func(m *Metrics) {
		if f != nil {
			m.keyAttr = f
		}
	}
}

// Bucket boundaries of the histograms, in seconds; the same as the
// Prometheus adapter's.
var (
	WaitBuckets    = lockmetrics.WaitBuckets()
	HoldBuckets    = lockmetrics.HoldBuckets()
	LatencyBuckets = lockmetrics.LatencyBuckets()
	MarginBuckets  = lockmetrics.MarginBuckets()
)

// New creates the instruments on a meter of mp. It returns an error if mp
// is nil or refuses an instrument.
func New(mp metric.MeterProvider, opts ...Option) (*Metrics, error) {
	if mp == nil {
		return nil, errors.New("microlock: otel: nil MeterProvider")
	}
	m := &Metrics{keyAttr: func(k string) string { return k }}
	for _, o := range opts {
		if o != nil {
			o(m)
		}
	}
	meter := mp.Meter(ScopeName)
	var errs []error
	hist := func(name, desc string, bounds []float64) metric.Float64Histogram {
		h, err := meter.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(bounds...))
		errs = append(errs, err)
		return h
	}
	count := func(name, unit, desc string) metric.Int64Counter {
		c, err := meter.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	upDown := func(name, unit, desc string) metric.Int64UpDownCounter {
		c, err := meter.Int64UpDownCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	m.wait = hist("microlock.acquire.duration", "Time Lock waited, by key and result.", WaitBuckets)
	m.hold = hist("microlock.hold.duration", "Time a lock was held, by key and how the hold ended.", HoldBuckets)
	m.latency = hist("microlock.renew.duration", "Round trip of a lease renewal, once per hold on the lease.", LatencyBuckets)
	m.margin = hist("microlock.renew.margin", "Time left before the loss deadline when a renewal was acknowledged, once per hold on the lease.", MarginBuckets)
	m.losses = count("microlock.losses", "{loss}", "Holds that ended without Unlock, by key and reason.")
	m.retries = count("microlock.retries", "{retry}", "Transient etcd errors retried while acquiring, releasing or renewing.")
	m.held = upDown("microlock.held", "{lock}", "Locks held now, by key.")
	m.waiting = upDown("microlock.waiting", "{call}", "Lock calls queued behind a holder now, by key.")
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("microlock: otel: creating instruments: %w", err)
	}
	return m, nil
}

// Option returns the microlock option that feeds this Metrics. It composes
// with the caller's own OnEvent hooks.
func (m *Metrics) Option() microlock.Option { return microlock.OnEvent(m.Observe) }

// Observe records one event. Option passes it every event of a lock; call
// it yourself from a hook of your own if you prefer.
func (m *Metrics) Observe(ev microlock.Event) {
	lockmetrics.Observe((*recorder)(m), ev, m.keyAttr)
}

// recorder is Metrics as a lockmetrics.Recorder, without those methods in
// Metrics' own API.
type recorder Metrics

func (r *recorder) Wait(key, result string, s float64) {
	r.wait.Record(context.Background(), s, metric.WithAttributes(KeyAttr.String(key), ResultAttr.String(result)))
}

func (r *recorder) Hold(key, end string, s float64) {
	r.hold.Record(context.Background(), s, metric.WithAttributes(KeyAttr.String(key), EndAttr.String(end)))
}

func (r *recorder) Loss(key, reason string) {
	r.losses.Add(context.Background(), 1, metric.WithAttributes(KeyAttr.String(key), ReasonAttr.String(reason)))
}

func (r *recorder) Renewal(latency, margin float64) {
	r.latency.Record(context.Background(), latency)
	r.margin.Record(context.Background(), margin)
}

func (r *recorder) Retry() { r.retries.Add(context.Background(), 1) }

func (r *recorder) Held(key string, d int64) {
	r.held.Add(context.Background(), d, metric.WithAttributes(KeyAttr.String(key)))
}

func (r *recorder) Waiting(key string, d int64) {
	r.waiting.Add(context.Background(), d, metric.WithAttributes(KeyAttr.String(key)))
}
