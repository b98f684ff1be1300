package main

import (
	"bytes"
	"strings"
	"testing"
)

const admissionSample = `goos: linux
BenchmarkSemaphore/semaphore-2         	     200	   3735795 ns/op	       300 holds/s	         1.05 max/min	       103.3 p99-wait-ms	         1.7 wakeups/release
BenchmarkSemaphore/in-turn-2           	     200	   4113839 ns/op	       250 holds/s	         1.077 max/min	       149.2 p99-wait-ms
BenchmarkSemaphore/independent-2       	     200	   2847201 ns/op	       400 holds/s	         1.077 max/min	        59.93 p99-wait-ms
BenchmarkReadHeavy/microlock-2         	     200	   1935873 ns/op	       500 holds/s	         1.2 max/min	        43.11 p99-wait-ms
BenchmarkReadHeavy/etcd-rwmutex-2      	     200	   8678207 ns/op	       100 holds/s	         1.545 max/min	       197.7 p99-wait-ms
`

// TestTableAdmission: the semaphore and read-heavy rows, their ratios and
// verdicts.
func TestTableAdmission(t *testing.T) {
	var r results
	if err := parse(strings.NewReader(admissionSample), &r); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	render(&buf, &r)
	var rows [][]string // the cells of each table line from the semaphore's on
	for _, line := range strings.Split(buf.String(), "\n") {
		if strings.HasPrefix(line, "| Semaphore limit") || len(rows) > 0 && strings.HasPrefix(line, "| ") {
			var cells []string
			for _, c := range strings.Split(strings.Trim(line, "|"), "|") {
				cells = append(cells, strings.TrimSpace(c))
			}
			rows = append(rows, cells)
		}
	}
	// measure, microlock, etcd, floor, ratio, target, result
	want := [][]string{
		{"Semaphore limit 4, 16 contenders: holds/s; floor: 4 Mutexes tried in turn", "300", "", "250", "1.20× [—]", "≥ 1× in turn", "PASS"},
		{"… ÷ 4 independent keys, 4 contenders each (floor column)", "300", "", "400", "0.75× [—]", "≥ 0.80× independent", "FAIL"},
		{"… p99 wait (ms): semaphore; floor: in turn / independent keys", "103", "", "149 / 59.9", "", "", ""},
		{"… fairness: most ÷ fewest acquisitions", "1.05× [—]", "", "", "1.05× [—]", "≤ 1.10×", "PASS"},
		{"… wake-ups per release: watch events delivered", "1.70", "", "", "", "≤ n+1 = 5", "PASS"},
		{"Read-heavy, 90% shared, 8 contenders: holds/s; etcd: recipes.RWMutex", "500", "100", "", "5.00× [—]", "≥ 2× etcd", "PASS"},
		{"… p99 wait (ms)", "43.1", "198", "", "", "", ""},
		{"… fairness: most ÷ fewest holds", "1.20× [—]", "1.54× [—]", "", "1.20× [—]", "≤ 1.10×", "FAIL"},
	}
	if len(rows) != len(want) {
		t.Fatalf("%d rows from the semaphore's on, want %d:\n%s", len(rows), len(want), buf.String())
	}
	for i := range want {
		if strings.Join(rows[i], " | ") != strings.Join(want[i], " | ") {
			t.Errorf("row %d:\n got %q\nwant %q", i, rows[i], want[i])
		}
	}
}
