package main

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// results are the samples of a run: for each benchmark (by name, without
// the -GOMAXPROCS suffix) and unit, one value per -count repetition.
type results struct {
	header  map[string]string // "cpu", "goos", "etcd", … from go test's output
	procs   string            // the GOMAXPROCS suffix, as the harness printed it
	samples map[string]map[string][]float64
}

var (
	benchLine  = regexp.MustCompile(`^(Benchmark\S+?)(?:-(\d+))?\s+(\d+)\s+(.+)$`)
	headerLine = regexp.MustCompile(`^(goos|goarch|cpu|pkg|etcd): (.+)$`)
)

// parse reads go test -bench output. Lines that are neither a header nor a
// benchmark result (logs, PASS, ok) are skipped; a result line that does not
// parse is an error.
func parse(r io.Reader, into *results) error {
	if into.header == nil {
		into.header = make(map[string]string)
		into.samples = make(map[string]map[string][]float64)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if m := headerLine.FindStringSubmatch(line); m != nil {
			into.header[m[1]] = m[2]
			continue
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		name, procs, rest := m[1], m[2], m[4]
		if procs != "" {
			into.procs = procs
		}
		f := strings.Fields(rest)
		if len(f)%2 != 0 {
			return fmt.Errorf("line %d: odd number of value/unit fields: %q", n, line)
		}
		if into.samples[name] == nil {
			into.samples[name] = make(map[string][]float64)
		}
		for i := 0; i < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return fmt.Errorf("line %d: %q is not a number: %v", n, f[i], err)
			}
			into.samples[name][f[i+1]] = append(into.samples[name][f[i+1]], v)
		}
	}
	return sc.Err()
}

// median returns the median of the samples of a benchmark's unit, and how
// many there were; ok is false when there are none.
func (r *results) median(name, unit string) (v float64, n int, ok bool) {
	s := slices.Clone(r.samples[name][unit])
	if len(s) == 0 {
		return 0, 0, false
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], len(s), true
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, len(s), true
}
