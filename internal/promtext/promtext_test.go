package promtext

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/microlock/microlock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestWriteTo: the text of a known sequence of events, byte for byte; the
// same events through the Prometheus client itself are checked against
// this package in contrib/prometheus.
func TestWriteTo(t *testing.T) {
	m := New()
	k := `jobs/"a"\b` // a key the label value must escape
	for _, ev := range []microlock.Event{
		{Type: microlock.Queued, Key: k, Place: 1},
		{Type: microlock.Acquired, Key: k, Waited: 20 * time.Millisecond, Place: 1},
		{Type: microlock.Renewed, Key: k, Latency: time.Millisecond, Margin: 6 * time.Second},
		{Type: microlock.Retrying, Key: k},
		{Type: microlock.Lost, Key: k, Held: 2 * time.Second, Reason: microlock.LossKeyDeleted},
		{Type: microlock.GaveUp, Key: "b", Err: fmt.Errorf("microlock: waiting: %w", context.Canceled), Waited: time.Second},
	} {
		m.Observe(ev)
	}
	var b strings.Builder
	if _, err := m.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	got := b.String()
	for _, want := range []string{
		"# TYPE microlock_acquire_wait_seconds histogram\n",
		`microlock_acquire_wait_seconds_bucket{key="b",result="canceled",le="0.5"} 0` + "\n",
		`microlock_acquire_wait_seconds_bucket{key="b",result="canceled",le="1"} 1` + "\n",
		`microlock_acquire_wait_seconds_bucket{key="jobs/\"a\"\\b",result="acquired",le="0.01"} 0` + "\n",
		`microlock_acquire_wait_seconds_bucket{key="jobs/\"a\"\\b",result="acquired",le="0.025"} 1` + "\n",
		`microlock_acquire_wait_seconds_bucket{key="jobs/\"a\"\\b",result="acquired",le="+Inf"} 1` + "\n",
		`microlock_acquire_wait_seconds_sum{key="jobs/\"a\"\\b",result="acquired"} 0.02` + "\n",
		`microlock_acquire_wait_seconds_count{key="jobs/\"a\"\\b",result="acquired"} 1` + "\n",
		`microlock_held{key="jobs/\"a\"\\b"} 0` + "\n",
		`microlock_hold_seconds_bucket{end="lost",key="jobs/\"a\"\\b",le="1"} 0` + "\n",
		`microlock_hold_seconds_bucket{end="lost",key="jobs/\"a\"\\b",le="5"} 1` + "\n",
		`microlock_hold_seconds_sum{end="lost",key="jobs/\"a\"\\b"} 2` + "\n",
		"# TYPE microlock_losses_total counter\n",
		`microlock_losses_total{key="jobs/\"a\"\\b",reason="key_deleted"} 1` + "\n",
		`microlock_renew_latency_seconds_bucket{le="0.001"} 1` + "\n",
		"microlock_renew_latency_seconds_sum 0.001\nmicrolock_renew_latency_seconds_count 1\n",
		`microlock_renew_margin_seconds_bucket{le="5"} 0` + "\n",
		`microlock_renew_margin_seconds_bucket{le="6"} 1` + "\n",
		"microlock_retries_total 1\n",
		`microlock_waiting{key="jobs/\"a\"\\b"} 0` + "\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the text lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, `microlock_held{key="b"}`) || strings.Contains(got, `microlock_waiting{key="b"}`) {
		t.Errorf("a Lock that never queued nor held moved a gauge:\n%s", got)
	}
	// Families in name order.
	last := ""
	for _, line := range strings.Split(got, "\n") {
		if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name = strings.Fields(name)[0]
			if name <= last {
				t.Errorf("family %s after %s", name, last)
			}
			last = name
		}
	}
}

func TestEmpty(t *testing.T) {
	rec := httptest.NewRecorder()
	New().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q", ct)
	}
	// Metrics without labels are there from the start; those with labels
	// once they have a series, as with the Prometheus client.
	for _, want := range []string{"microlock_retries_total 0\n", "microlock_renew_margin_seconds_count 0\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("empty metrics lack %q:\n%s", want, body)
		}
	}
	if strings.Contains(body, "microlock_held") || strings.Contains(body, "microlock_acquire_wait_seconds") {
		t.Errorf("a family with labels but no series:\n%s", body)
	}
}
