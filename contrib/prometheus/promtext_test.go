package prometheus_test

import (
	"math"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/proto"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/promtext"
)

// TestCommandMetricsMatch: the microlock command writes its metrics by hand
// (internal/promtext: the root module cannot depend on the Prometheus
// client). Fed the same real events as the adapter, its text must parse as
// Prometheus text and hold the very families the adapter's registry
// gathers: names, help, types, labels, buckets and values.
func TestCommandMetricsMatch(t *testing.T) {
	m, reg := newRegistry(t)
	text := promtext.New()
	driveAll(t, reg, m.Option(), microlock.OnEvent(text.Observe))

	var b strings.Builder
	if _, err := text.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	got, err := parser.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("the command's metrics do not parse: %v\n%s", err, b.String())
	}
	want, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("%d families, the adapter has %d", len(got), len(want))
	}
	for _, w := range want {
		g, ok := got[w.GetName()]
		if !ok {
			t.Errorf("no family %s", w.GetName())
			continue
		}
		// The parser leaves what text cannot carry unset.
		for _, m := range w.Metric {
			if h := m.Histogram; h != nil {
				h.CreatedTimestamp = nil
				for _, b := range h.Bucket {
					b.Exemplar = nil
				}
			}
			if c := m.Counter; c != nil {
				c.CreatedTimestamp = nil
			}
		}
		if !proto.Equal(normal(t, g), normal(t, w)) {
			t.Errorf("family %s differs:\ncommand: %v\nadapter: %v", w.GetName(), g, w)
		}
	}
}

// normal returns f with the text parser's and the registry's differences
// that carry no meaning removed: sample order, and the +Inf bucket, which
// text carries and a registry leaves implicit (it must equal the count).
func normal(t *testing.T, f *dto.MetricFamily) *dto.MetricFamily {
	f = proto.Clone(f).(*dto.MetricFamily)
	for _, m := range f.Metric {
		if h := m.Histogram; h != nil {
			if n := len(h.Bucket); n > 0 && math.IsInf(h.Bucket[n-1].GetUpperBound(), 1) {
				if h.Bucket[n-1].GetCumulativeCount() != h.GetSampleCount() {
					t.Errorf("%s: +Inf bucket %d, count %d", f.GetName(), h.Bucket[n-1].GetCumulativeCount(), h.GetSampleCount())
				}
				h.Bucket = h.Bucket[:n-1]
			}
		}
	}
	key := func(m *dto.Metric) string {
		var s strings.Builder
		for _, l := range m.Label {
			s.WriteString(l.GetName() + "=" + l.GetValue() + ",")
		}
		return s.String()
	}
	ms := f.Metric
	for i := range ms {
		for j := i + 1; j < len(ms); j++ {
			if key(ms[j]) < key(ms[i]) {
				ms[i], ms[j] = ms[j], ms[i]
			}
		}
	}
	return f
}
