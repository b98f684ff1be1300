package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"golang.org/x/perf/benchfmt"
	"golang.org/x/perf/benchmath"
)

// results are the samples of a run: for each benchmark (by name, without
// the -GOMAXPROCS suffix) and unit, one value per -count repetition.
type results struct {
	header  map[string]string // "cpu", "goos", "etcd", … from go test's output
	procs   string            // the GOMAXPROCS suffix, as the harness printed it
	samples map[string]map[string][]float64
}

// confidence is the level of the medians' confidence intervals.
const confidence = 0.95

// parse reads go test -bench output with benchfmt. Lines that are neither
// a configuration line ("cpu: …", "etcd: …") nor a benchmark result (logs,
// PASS, ok) are skipped, and so are lines that start with a benchmark's name
// but hold no iteration count: go test prints the name of a benchmark that
// fails before "--- FAIL", and output the benchmark writes may follow it. A
// result line that does not parse (a value with no unit, a value that is no
// number) is an error.
func parse(r io.Reader, into *results) error {
	if into.header == nil {
		into.header = make(map[string]string)
		into.samples = make(map[string]map[string][]float64)
	}
	br := benchfmt.NewReader(r, "")
	for br.Scan() {
		switch rec := br.Result().(type) {
		case *benchfmt.SyntaxError:
			// benchfmt reports such a line as "missing iteration
			// count" or "parsing iteration count: …";
			// TestParseSkipsFailedBenchmark notices if that changes.
			if strings.Contains(rec.Msg, "iteration count") {
				continue
			}
			return fmt.Errorf("line %d: %s", rec.Line, rec.Msg)
		case *benchfmt.Result:
			for _, c := range rec.Config {
				if c.File {
					into.header[c.Key] = string(c.Value)
				}
			}
			name := rec.Name.Full()
			if _, parts := rec.Name.Parts(); len(parts) > 0 && strings.HasPrefix(string(parts[len(parts)-1]), "-") {
				procs := parts[len(parts)-1]
				into.procs = string(procs[1:])
				name = name[:len(name)-len(procs)]
			}
			// benchfmt's names lack the "Benchmark" the table's have.
			key := "Benchmark" + string(name)
			if into.samples[key] == nil {
				into.samples[key] = make(map[string][]float64)
			}
			for _, v := range rec.Values {
				// benchfmt tidies units (ns/op to sec/op, …); the
				// table is written in the units the benchmarks report.
				unit, val := v.Unit, v.Value
				if v.OrigUnit != "" {
					unit, val = v.OrigUnit, v.OrigValue
				}
				into.samples[key][unit] = append(into.samples[key][unit], val)
			}
		}
	}
	return br.Err()
}

// summary returns the median of the samples of a benchmark's unit and its
// confidence interval, as benchmath computes it assuming nothing of their
// distribution, and how many samples there were; ok is false when there
// are none. With too few samples for an interval at the level asked, the
// bounds are infinite and Warnings says how many it needs.
func (r *results) summary(name, unit string) (s benchmath.Summary, n int, ok bool) {
	v := slices.Clone(r.samples[name][unit]) // NewSample sorts in place
	if len(v) == 0 {
		return benchmath.Summary{}, 0, false
	}
	return benchmath.AssumeNothing.Summary(benchmath.NewSample(v, &benchmath.DefaultThresholds), confidence), len(v), true
}

// median returns the median of the samples of a benchmark's unit, and how
// many there were; ok is false when there are none.
func (r *results) median(name, unit string) (v float64, n int, ok bool) {
	s, n, ok := r.summary(name, unit)
	return s.Center, n, ok
}
