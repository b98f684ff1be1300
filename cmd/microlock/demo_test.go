//go:build unix

package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/microlock/microlock/internal/etcdtest"
)

// TestDemo runs the demo as `make demo` does, on its own etcd, and checks
// that it completes in well under a minute, tells its story, and removes
// its temporary directory.
func TestDemo(t *testing.T) {
	t.Parallel()
	bin, err := etcdtest.EtcdBinary()
	if err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	p := start(t, nil, "demo", "--etcd-binary", bin)
	p.expectExit(60*time.Second, 0)
	elapsed := time.Since(begin)
	out := p.stdout.String()
	t.Logf("demo took %v:\n%s", elapsed.Round(time.Millisecond), out)
	if elapsed > 45*time.Second {
		t.Errorf("demo took %v; it must finish well under a minute", elapsed)
	}
	for _, want := range []string{
		"worker-1  holds the lock, fencing token",
		"the order in which they asked",
		"worker-5  work cancelled: microlock: lock on \"microlock-demo/nightly-report\" lost",
		"Margin: worker-5 stopped",
		"never two at once",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	m := regexp.MustCompile(`Stopped etcd and removed (\S+)\.`).FindStringSubmatch(out)
	if m == nil {
		t.Fatal("demo did not say it removed its directory")
	}
	if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Fatalf("demo's directory %s is still there (%v)", m[1], err)
	}
}

// TestDemoEndpoints runs the demo on a cluster given with --endpoints.
func TestDemoEndpoints(t *testing.T) {
	t.Parallel()
	c := etcdtest.Start(t, 1)
	p := start(t, nil, "demo", "--endpoints", c.Endpoints()[0])
	p.expectExit(60*time.Second, 0)
	if out := p.stdout.String(); !strings.Contains(out, "the cluster at "+c.Endpoints()[0]) || !strings.Contains(out, "Margin:") {
		t.Fatalf("demo on --endpoints:\n%s", out)
	}
}

// TestDemoWithoutEtcd: with no etcd to be found, demo says how to get one.
func TestDemoWithoutEtcd(t *testing.T) {
	t.Parallel()
	p := startIn(t, t.TempDir(), []string{"PATH=/nonexistent"}, "demo")
	code, stderr := p.wait(30*time.Second), p.stderr.String()
	if code != exitUnavailable || !strings.Contains(stderr, "make demo") {
		t.Fatalf("demo without etcd: exit %d, stderr:\n%s", code, stderr)
	}
}

// TestDemoElection runs the election demo as `make demo-election` does: the
// leader is cut off, stops leading before the next candidate leads with a
// higher term, and goes back in line.
func TestDemoElection(t *testing.T) {
	t.Parallel()
	bin, err := etcdtest.EtcdBinary()
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, nil, "demo", "--election", "--etcd-binary", bin)
	p.expectExit(60*time.Second, 0)
	out := p.stdout.String()
	t.Logf("demo --election:\n%s", out)
	for _, want := range []string{
		"candidate-1 leads, term ",
		"candidate-1 stops leading: microlock: lock on \"microlock-demo/scheduler\" lost",
		"candidate-2 leads, term ",
		"candidate-1 is back in line",
		"Leaders in turn: candidate-1 → candidate-2; never two at once",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("demo --election output lacks %q", want)
		}
	}
	// The order of the story: the leader stops before the next one leads.
	stop, next := strings.Index(out, "candidate-1 stops leading"), strings.Index(out, "candidate-2 leads")
	if stop < 0 || next < stop {
		t.Errorf("the cut-off leader's stop is not before the next leader's term")
	}
	m := regexp.MustCompile(`term (\d+) > (\d+)`).FindStringSubmatch(out)
	if m == nil || len(m[1]) < len(m[2]) || (len(m[1]) == len(m[2]) && m[1] <= m[2]) {
		t.Errorf("the next leader's term is not above the first's: %q", m)
	}
}
