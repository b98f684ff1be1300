package prometheus_test

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/testkit"
)

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name       string `json:"name"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		Title      string          `json:"title"`
		Datasource json.RawMessage `json:"datasource"`
		Targets    []struct {
			Expr  string `json:"expr"`
			RefID string `json:"refId"`
		} `json:"targets"`
	} `json:"panels"`
}

var seriesName = regexp.MustCompile(`\bmicrolock_[a-z_]+\b`)

// exportedSeries drives every kind of event through the adapter (driveAll)
// and returns the series names the registry exposes, as a scrape
// sees them: microlock_hold_seconds_bucket, microlock_held, ...
func exportedSeries(t *testing.T) map[string]bool {
	t.Helper()
	m, reg := newRegistry(t)
	driveAll(t, reg, m.Option())
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	enc := expfmt.NewEncoder(&text, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	names := make(map[string]bool)
	for _, line := range strings.Split(text.String(), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		names[strings.FieldsFunc(line, func(r rune) bool { return r == '{' || r == ' ' })[0]] = true
	}
	return names
}

// driveAll drives every kind of event through locks made with opts, on real
// etcd: two holds of one key, one queued behind the other; a renewal; a
// loss by key deletion. reg is the registry of an adapter among opts.
func driveAll(t *testing.T, reg *prom.Registry, opts ...microlock.Option) {
	t.Helper()
	c := shared.Client(t)
	ctx := testkit.Ctx(t, 30*time.Second)
	key := t.Name()
	a := testkit.Mutex(t, c, key, opts...)
	b := testkit.Mutex(t, c, key, opts...)
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- b.Lock(ctx) }()
	testkit.WaitFor(t, "the waiter to queue", func() bool { return gauge(t, reg, "microlock_waiting", "key", key) == 1 })
	if err := a.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // b's key watch is in place
	if _, err := c.Delete(ctx, key+"/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	<-b.Done()
	testkit.WaitFor(t, "the loss", func() bool {
		return counter(t, reg, "microlock_losses_total", "key", key, "reason", microlock.LossKeyDeleted.String()) == 1
	})
}

// TestDashboard: dashboard.json parses, has the panels the adapter is for,
// and every query names only series the adapter really exports; every
// series family the adapter exports is graphed.
func TestDashboard(t *testing.T) {
	raw, err := os.ReadFile("dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	exported := exportedSeries(t)
	families := map[string]bool{}
	for name := range exported {
		families[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")] = true
	}
	if len(families) != 8 {
		t.Fatalf("the driven run exported %d series families, want all 8: %v", len(families), families)
	}

	var titles []string
	used := map[string]bool{}
	check := func(where, expr string) {
		names := seriesName.FindAllString(expr, -1)
		if len(names) == 0 {
			t.Errorf("%s: query %q names no microlock series", where, expr)
		}
		for _, n := range names {
			if !exported[n] {
				t.Errorf("%s: query names %s, which the adapter does not export", where, n)
			}
			used[n] = true
		}
		if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
			t.Errorf("%s: unbalanced query %q", where, expr)
		}
	}
	for _, p := range d.Panels {
		titles = append(titles, p.Title)
		if len(p.Targets) == 0 || len(p.Datasource) == 0 {
			t.Errorf("panel %q has no queries or no data source", p.Title)
		}
		for _, q := range p.Targets {
			if q.RefID == "" {
				t.Errorf("panel %q: a query without refId", p.Title)
			}
			check("panel "+p.Title, q.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Definition != "" {
			check("variable "+v.Name, v.Definition)
		}
	}
	for _, want := range []string{"Wait for the lock, p99", "Hold time", "Losses by reason", "Renewal margin"} {
		if !slices.Contains(titles, want) {
			t.Errorf("no panel %q among %q", want, titles)
		}
	}
	for f := range families {
		if !used[f] && !used[f+"_bucket"] && !used[f+"_count"] {
			t.Errorf("the dashboard graphs nothing of %s", f)
		}
	}
}
