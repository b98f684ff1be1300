package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// heldTTL is the lease TTL of the held-locks benchmark.
const heldTTL = 5 * time.Second

// profileDirEnv names a directory for the held-locks helpers' heap profiles.
const profileDirEnv = "MICROLOCK_BENCH_PROFILE_DIR"

// BenchmarkHeld has one client hold N locks for a while (30 s; 10 s with
// -short) and measures what holding costs: keepalive messages per second,
// client CPU, client memory per held lock, and locks lost. Each run is a
// process of its own, this test binary run again, so that the two
// libraries' CPU and memory are not mixed. etcd's side holds one Session
// (one lease) per lock, as its users do. The helper runs once per call,
// whatever b.N: the harness calls it with b.N = 1 and, since one call lasts
// longer than any sensible -benchtime, only once. With
// MICROLOCK_BENCH_PROFILE_DIR set, each helper also writes a heap profile of
// itself at the end of the hold there.
func BenchmarkHeld(b *testing.B) {
	hold := 30 * time.Second
	if testing.Short() {
		hold = 10 * time.Second
	}
	for _, n := range []int{1000, 10000} {
		for _, lib := range []string{"microlock", "etcd"} {
			b.Run(fmt.Sprintf("N=%d/%s", n, lib), func(b *testing.B) {
				r := runHeld(b, heldConfig{
					Lib:        lib,
					Locks:      n,
					Hold:       hold,
					TTL:        heldTTL,
					Endpoints:  etcdOf(b).Endpoints(),
					Prefix:     freshKey(b),
					ProfileDir: os.Getenv(profileDirEnv),
				})
				if r.Lost > 0 {
					b.Errorf("%d of %d locks lost while held", r.Lost, n)
				}
				b.ReportMetric(r.Hold.Seconds(), "hold-s")
				b.ReportMetric(r.KeepAliveMsgs/r.Hold.Seconds(), "keepalives/s")
				b.ReportMetric(r.KeepAliveStreams/r.Hold.Seconds(), "ka-streams/s")
				b.ReportMetric(r.Requests/r.Hold.Seconds(), "requests/s")
				b.ReportMetric(r.CPU.Seconds()*1000/r.Hold.Seconds(), "cpu-ms/s")
				b.ReportMetric(r.HeapDelta/float64(n), "heap-B/lock")
				b.ReportMetric(r.RSSDelta/float64(n), "rss-B/lock")
				b.ReportMetric(float64(r.Goroutines)/float64(n), "goroutines/lock")
				b.ReportMetric(float64(r.Lost), "lost")
				b.ReportMetric(r.Acquire.Seconds()*1e6/float64(n), "acquire-us/lock")
				b.ReportMetric(r.Settle.Seconds(), "settle-s")
			})
		}
	}
}

// runHeld runs the held-locks helper process and returns what it measured.
func runHeld(b *testing.B, cfg heldConfig) heldResult {
	b.Helper()
	conf, err := json.Marshal(cfg)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=held", heldConfigEnv+"="+string(conf))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	b.ResetTimer()
	err = cmd.Run()
	b.StopTimer()
	if err != nil {
		b.Fatalf("held-locks helper: %v\n%s", err, stderr.String())
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		b.Log(s)
	}
	var r heldResult
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		b.Fatalf("held-locks helper's answer %q: %v", stdout.String(), err)
	}
	b.Logf("%s held %d locks for %v; requests by method: %v", cfg.Lib, cfg.Locks, r.Hold, r.ByMethod)
	return r
}
