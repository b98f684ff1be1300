package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sample is go test -bench output of two repetitions, as the harness prints
// it, with a log line and a benchmark that failed to report in between.
const sample = `etcd: 3.7.3, single node, data on tmpfs, no fsync
goos: linux
goarch: amd64
pkg: github.com/microlock/microlock/internal/bench
cpu: AMD EPYC
BenchmarkSideBySide/cycle-2         	     541	   5634961 ns/op	       348.1 WithLock-cpu-us	       700 WithLock-us	       600 floor-us	       630 Mutex-us
BenchmarkSideBySide/cycle-2         	     541	   5634961 ns/op	       348.1 WithLock-cpu-us	       500 WithLock-us	       490 floor-us	       500 Mutex-us
BenchmarkSideBySide/cycle-2         	     541	   5634961 ns/op	       348.1 WithLock-cpu-us	       660 WithLock-us	       620 floor-us	       640 Mutex-us
--- BENCH: BenchmarkSideBySide/cycle-2
    sidebyside_test.go:40: a log line
BenchmarkSideBySide/trylock-2       	    3159	   1631890 ns/op	       500 etcd-us	       400 microlock-us	       270 txn-us
BenchmarkFloor/Txn-2                	    4000	    300000 ns/op	    5000 B/op	      80 allocs/op
BenchmarkFloor/Get-2                	    6000	    200000 ns/op	    4000 B/op	      70 allocs/op
BenchmarkContention/C=2/microlock-2 	     300	  10700505 ns/op	       900 handoffs/s	         1.000 max/min	         0.5 p50-ms	         2 p99-ms
BenchmarkContention/C=2/etcd-2      	      30	  12402611 ns/op	       100 handoffs/s	         1.000 max/min	         9 p50-ms	        99 p99-ms
BenchmarkContention/C=8/microlock-2 	     327	  10700505 ns/op	      1600 handoffs/s	         1.000 max/min	         0.5635 p50-ms	        94.02 p99-ms
BenchmarkContention/C=8/etcd-2      	      94	  12402611 ns/op	        50 handoffs/s	         1.000 max/min	         1.316 p50-ms	        90.37 p99-ms
BenchmarkKeys/K=16-2                	    1000	   1000000 ns/op	      9000 microlock-cycles/s	     10000 etcd-cycles/s	      9600 requests-cycles/s
BenchmarkAuth/cycle-2               	     100	   2000000 ns/op	         0 auth-authenticate/op	      1000 auth-us	       800 noauth-us	      900 auth-etcd-cpu-us	       700 noauth-etcd-cpu-us
BenchmarkAuth/renew-2               	       5	  60000000 ns/op	         1 auth-authenticate/op	     60000 auth-us	       400 noauth-us	    70000 auth-etcd-cpu-us	       300 noauth-etcd-cpu-us
BenchmarkAuth/C=2/noauth-2          	     200	   2000000 ns/op	       450 handoffs/s	      1500 etcd-cpu-us/op
BenchmarkAuth/C=2/auth-2            	      20	  66000000 ns/op	        15 handoffs/s	     65000 etcd-cpu-us/op	         1 authenticate/op
PASS
ok  	github.com/microlock/microlock/internal/bench	20.949s
`

func TestParse(t *testing.T) {
	var r results
	if err := parse(strings.NewReader(sample), &r); err != nil {
		t.Fatal(err)
	}
	if r.header["cpu"] != "AMD EPYC" || r.header["etcd"] != "3.7.3, single node, data on tmpfs, no fsync" || r.procs != "2" {
		t.Errorf("header = %v, procs %q", r.header, r.procs)
	}
	v, n, ok := r.median("BenchmarkSideBySide/cycle", "WithLock-us")
	if !ok || n != 3 || v != 660 {
		t.Errorf("median of WithLock-us = %v over %d (ok %v), want 660 over 3", v, n, ok)
	}
	if v, _, _ := r.median("BenchmarkContention/C=8/microlock", "p50-ms"); v != 0.5635 {
		t.Errorf("p50-ms = %v, want 0.5635", v)
	}
	if _, _, ok := r.median("BenchmarkHeld/N=1000/etcd", "lost"); ok {
		t.Error("a benchmark that did not run has a median")
	}
	// An even number of samples: the mean of the middle two.
	r.samples["x"] = map[string][]float64{"u": {4, 1, 3, 2}}
	if v, _, _ := r.median("x", "u"); v != 2.5 {
		t.Errorf("median of 1…4 = %v, want 2.5", v)
	}
}

func TestParseRejectsGarbledResult(t *testing.T) {
	var r results
	err := parse(strings.NewReader("BenchmarkX-2  10  100 ns/op  7\n"), &r)
	if err == nil {
		t.Fatal("parse accepted a result line with a value and no unit")
	}
}

func TestTable(t *testing.T) {
	var r results
	if err := parse(strings.NewReader(sample), &r); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	render(&out, &r)
	got := out.String()
	for _, want := range []string{"cpu: AMD EPYC", "GOMAXPROCS: 2", "median of 3 run(s)", "| Measure",
		"at least 90% confident", "[—]: too few runs for an interval (need >= 6 samples for confidence interval at level 0.95).",
		// 20 targets in all, 9 of them with figures in the sample.
		"Targets: 6 met, 3 missed, 17 not measured."} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
	for _, tc := range []struct{ measure, ratio, result string }{
		// 660 / 600: at the bound, met.
		{"Uncontended cycle in turn", "1.10× [—]", "PASS"},
		// 400 / 500 > 0.6: missed.
		{"TryLock on a held key in turn", "0.80× [—]", "FAIL"},
		// 1600 / 50 ≥ 10: met.
		{"Contention C=8: handoffs/s", "32× [—]", "PASS"},
		// 900 / 100 < 10: missed.
		{"Contention C=2: handoffs/s", "9.00× [—]", "FAIL"},
		// 1600 / (1e6 / (300 µs + 200 µs)) ≥ 0.55: met.
		{"÷ two-request floor", "0.80× [—]", "PASS"},
		// 1600 / (1e6 / 630 µs): for reference, no target.
		{"C=8 handoffs/s ÷ uncontended", "1.01× [—]", ""},
		// 9000 / 10000 ≥ 0.9: at the bound, met.
		{"Independent keys K=16", "0.90× [—]", "PASS"},
		// 9000 / 9600 < 0.95: missed.
		{"÷ microlock's two requests sent by hand", "0.94× [—]", "FAIL"},
		{"the requests by hand ÷ etcd's", "0.96× [—]", ""},
		// Not measured.
		{"Independent keys K=256", "—", "n/a"},
		// Authentication, for reference: 1000 / 800, 60000 / 400, 15 / 450.
		{"Auth on ÷ off, in turn: Mutex.Lock+Unlock", "1.25× [—]", ""},
		{"Auth on ÷ off, in turn: Mutex.Renew", "150× [—]", ""},
		{"Auth on ÷ off: contention C=2", "0.03× [—]", ""},
	} {
		cells := strings.Split(rowOf(got, tc.measure), "|")
		if len(cells) != 9 {
			t.Errorf("no row %q:\n%s", tc.measure, got)
			continue
		}
		if ratio, result := strings.TrimSpace(cells[5]), strings.TrimSpace(cells[7]); ratio != tc.ratio || result != tc.result {
			t.Errorf("%s: ratio %s, result %s; want %s, %s", tc.measure, ratio, result, tc.ratio, tc.result)
		}
	}
}

// TestTableInterval checks a ratio's interval where there are runs enough
// for one: with 6, the medians' 95% intervals are the samples' ranges.
func TestTableInterval(t *testing.T) {
	var in strings.Builder
	for _, v := range [][2]int{{660, 600}, {650, 600}, {670, 610}, {660, 590}, {660, 600}, {660, 600}} {
		fmt.Fprintf(&in, "BenchmarkSideBySide/cycle-2 541 5634961 ns/op %d WithLock-us %d floor-us\n", v[0], v[1])
	}
	var r results
	if err := parse(strings.NewReader(in.String()), &r); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	render(&out, &r)
	got := out.String()
	// 660 / 600, in [650 / 610, 670 / 590].
	cells := strings.Split(rowOf(got, "Uncontended cycle in turn"), "|")
	if len(cells) != 9 || strings.TrimSpace(cells[5]) != "1.10× [1.07, 1.14]" || strings.TrimSpace(cells[7]) != "PASS" {
		t.Errorf("want 1.10× [1.07, 1.14], PASS:\n%s", got)
	}
	if strings.Contains(got, "[—]") {
		t.Errorf("an unbounded interval from 6 runs:\n%s", got)
	}
}

// TestParseSkipsFailedBenchmark checks that the line go test prints for a
// benchmark that fails, its name then "--- FAIL", is not taken for a garbled
// result.
func TestParseSkipsFailedBenchmark(t *testing.T) {
	in := "BenchmarkFloor/Get-2   \t--- FAIL: BenchmarkFloor/Get-2\n    floor_test.go:9: etcd is down\n" +
		"BenchmarkFloor/Txn-2 4000 300000 ns/op\n"
	var r results
	if err := parse(strings.NewReader(in), &r); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := r.median("BenchmarkFloor/Get", "ns/op"); ok {
		t.Error("the failed benchmark has a median")
	}
	if v, _, _ := r.median("BenchmarkFloor/Txn", "ns/op"); v != 300000 {
		t.Errorf("ns/op = %v, want 300000 as written, not tidied to seconds", v)
	}
}

func rowOf(table, measure string) string {
	for _, line := range strings.Split(table, "\n") {
		if strings.Contains(line, measure) {
			return line
		}
	}
	return ""
}

func TestRunWritesFile(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "bench.txt")
	if err := os.WriteFile(in, []byte(sample), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "table.md")
	var stdout bytes.Buffer
	if err := run([]string{in}, out, nil, &stdout); err != nil {
		t.Fatal(err)
	}
	written, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(written, stdout.Bytes()) || !bytes.Contains(written, []byte("| Measure")) {
		t.Errorf("the file and standard output differ, or hold no table:\n%s", written)
	}
	if err := run(nil, "", strings.NewReader("PASS\n"), &stdout); err == nil {
		t.Error("run accepted input with no benchmark results")
	}
}
