//go:build unix

package main

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var servingAt = regexp.MustCompile(`serving metrics on (http://\S+/metrics)`)

// metricsURL waits for run to say where it serves its metrics.
func metricsURL(t *testing.T, p *proc) string {
	t.Helper()
	var url string
	eventually(t, 20*time.Second, "the metrics address", func() error {
		m := servingAt.FindStringSubmatch(p.stderr.String())
		if m == nil {
			return errNotYet
		}
		url = m[1]
		return nil
	})
	return url
}

// scrape returns the samples of a /metrics page by series, as written.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("GET %s: %v, %s, %q", url, err, resp.Status, resp.Header.Get("Content-Type"))
	}
	samples := make(map[string]float64)
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("line %q of %s: %v", line, url, err)
		}
		samples[line[:i]] = v
	}
	return samples
}

// TestRunMetrics: two runs on one key, each serving its metrics. The
// second's page shows it waiting while the first holds the lock, then
// holding it, with the time it waited.
func TestRunMetrics(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	first := startRun(t, marks, childSpec{id: "first", onSignal: "exit"}, key, endpointsFlag(), "--metrics-addr", "127.0.0.1:0")
	firstURL := metricsURL(t, first)
	waitMark(t, marks, "start", "first", 20*time.Second)
	second := startRun(t, marks, childSpec{id: "second", hold: 3 * time.Second}, key, endpointsFlag(), "--metrics-addr=127.0.0.1:0")
	secondURL := metricsURL(t, second)

	held := fmt.Sprintf("microlock_held{key=%q}", key)
	waiting := fmt.Sprintf("microlock_waiting{key=%q}", key)
	waitCount := fmt.Sprintf("microlock_acquire_wait_seconds_count{key=%q,result=\"acquired\"}", key)
	waitSum := fmt.Sprintf("microlock_acquire_wait_seconds_sum{key=%q,result=\"acquired\"}", key)
	eventually(t, 20*time.Second, "the second run queued", func() error {
		if s := scrape(t, secondURL); s[waiting] != 1 {
			return fmt.Errorf("%s = %v", waiting, s[waiting])
		}
		return nil
	})
	queued := time.Now()
	s := scrape(t, secondURL)
	if _, ok := s[held]; ok || s[waitCount] != 0 || s["microlock_retries_total"] != 0 {
		t.Fatalf("the waiting run's metrics: %v", s)
	}
	s = scrape(t, firstURL)
	if s[held] != 1 || s[waitCount] != 1 {
		t.Fatalf("the holding run's metrics: %s %v, %s %v", held, s[held], waitCount, s[waitCount])
	}

	time.Sleep(200 * time.Millisecond)
	// The second queued before queued, and cannot hold before the first
	// releases, which is after this signal.
	minWait := time.Since(queued).Seconds()
	first.signal(syscall.SIGTERM) // passed on to its command, which exits
	first.expectExit(20*time.Second, 0)
	waitMark(t, marks, "start", "second", 20*time.Second)
	s = scrape(t, secondURL)
	if s[held] != 1 || s[waiting] != 0 || s[waitCount] != 1 || s[waitSum] < minWait {
		t.Fatalf("the second run's metrics once it holds: %s %v, %s %v, %s %v, %s %v (want at least %v)",
			held, s[held], waiting, s[waiting], waitCount, s[waitCount], waitSum, s[waitSum], minWait)
	}
	if s["microlock_renew_margin_seconds_count"] < 0 || s[fmt.Sprintf("microlock_acquire_wait_seconds_bucket{key=%q,result=\"acquired\",le=\"+Inf\"}", key)] != 1 {
		t.Fatalf("the second run's histograms: %v", s)
	}
	second.expectExit(20*time.Second, 0)
}

// TestRunMetricsOff: without --metrics-addr nothing is served; a bad
// address fails before the lock is taken.
func TestRunMetricsOff(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	p := startRun(t, marks, childSpec{id: "plain", hold: 10 * time.Millisecond}, key, endpointsFlag())
	p.expectExit(20*time.Second, 0)
	if strings.Contains(p.stderr.String(), "metrics") {
		t.Fatalf("a run without --metrics-addr mentions metrics: %q", p.stderr.String())
	}
	p = startRun(t, marks, childSpec{id: "bad"}, key, endpointsFlag(), "--metrics-addr", "127.0.0.1:99999")
	p.expectExit(20*time.Second, 1)
	if !strings.Contains(p.stderr.String(), "microlock: run: --metrics-addr") {
		t.Fatalf("stderr %q, want the --metrics-addr error", p.stderr.String())
	}
	if n := keysUnder(t, shared.Client(t), key); n != 0 {
		t.Fatalf("%d keys under %q after a run that could not serve its metrics", n, key)
	}
}
