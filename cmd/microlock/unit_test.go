//go:build unix

package main

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/microlock/microlock"
)

// TestGraceLimit pins the arithmetic that keeps SIGKILL before etcd could
// expire the lease: the margin the library leaves is max(250ms, T/10) of
// the granted (whole-second) TTL, less the allowance for signals.
func TestGraceLimit(t *testing.T) {
	for _, tc := range []struct {
		ttl, margin, grace time.Duration
	}{
		{time.Second, 250 * time.Millisecond, 150 * time.Millisecond},
		{1500 * time.Millisecond, 250 * time.Millisecond, 150 * time.Millisecond}, // granted 2s
		{2 * time.Second, 250 * time.Millisecond, 150 * time.Millisecond},
		{3 * time.Second, 300 * time.Millisecond, 200 * time.Millisecond},
		{10 * time.Second, time.Second, 900 * time.Millisecond},
		{9500 * time.Millisecond, time.Second, 900 * time.Millisecond}, // granted 10s
		{60 * time.Second, 6 * time.Second, 5900 * time.Millisecond},
	} {
		if got := lossMargin(tc.ttl); got != tc.margin {
			t.Errorf("lossMargin(%v) = %v, want %v", tc.ttl, got, tc.margin)
		}
		if got := maxGrace(tc.ttl); got != tc.grace {
			t.Errorf("maxGrace(%v) = %v, want %v", tc.ttl, got, tc.grace)
		}
		if err := checkGrace(tc.grace, tc.ttl); err != nil {
			t.Errorf("checkGrace(%v, %v): %v", tc.grace, tc.ttl, err)
		}
		if err := checkGrace(tc.grace+time.Millisecond, tc.ttl); err == nil {
			t.Errorf("checkGrace(%v, %v) accepted a grace over the limit", tc.grace+time.Millisecond, tc.ttl)
		}
	}
	// The TTL the refusal suggests does fit the grace.
	for _, grace := range []time.Duration{time.Second, 2 * time.Second, 4500 * time.Millisecond, 30 * time.Second} {
		err := checkGrace(grace, time.Second)
		if err == nil {
			t.Fatalf("checkGrace(%v, 1s) accepted it", grace)
		}
		_, after, _ := strings.Cut(err.Error(), "use --ttl ")
		ttl, perr := time.ParseDuration(strings.Fields(after)[0])
		if perr != nil {
			t.Fatalf("no TTL suggested in %q", err)
		}
		if err := checkGrace(grace, ttl); err != nil {
			t.Errorf("the suggested --ttl %v does not fit --grace %v: %v", ttl, grace, err)
		}
		if err := checkGrace(grace, ttl-time.Second); err == nil {
			t.Errorf("the suggested --ttl %v for --grace %v is not the smallest", ttl, grace)
		}
	}
}

func TestClip(t *testing.T) {
	short := []byte("node-a")
	if s, cut := clip(short); s != "node-a" || cut {
		t.Fatalf("clip(%q) = %q, %v", short, s, cut)
	}
	// A multi-byte character across the limit is not split.
	long := []byte(strings.Repeat("a", microlock.MaxNodeIDLen-1) + "é" + "tail")
	s, cut := clip(long)
	if !cut || s != strings.Repeat("a", microlock.MaxNodeIDLen-1) {
		t.Fatalf("clip of a long value: %d bytes, cut %v", len(s), cut)
	}
	if q := quoted([]byte("a\x1b[2J\xff")); q != `"a\x1b[2J\xff"` {
		t.Fatalf("quoted = %s", q)
	}
	if q := quoted(long); !strings.HasSuffix(q, fmt.Sprintf("... (%d bytes in all)", len(long))) {
		t.Fatalf("quoted long value ends %q", q[len(q)-30:])
	}
}

func TestDurationFlag(t *testing.T) {
	var d time.Duration
	f := durationFlag{&d}
	for in, want := range map[string]time.Duration{"10": 10 * time.Second, "1.5": 1500 * time.Millisecond, "250ms": 250 * time.Millisecond, "2m": 2 * time.Minute} {
		if err := f.Set(in); err != nil || d != want {
			t.Errorf("Set(%q) = %v, %v; want %v", in, d, err, want)
		}
	}
	for _, in := range []string{"-1", "-1s", "soon", ""} {
		if err := f.Set(in); err == nil {
			t.Errorf("Set(%q) accepted", in)
		}
	}
}

func TestParse(t *testing.T) {
	fs := newFlagSet("x")
	j := fs.Bool("json", false, "")
	p, err := parse(fs, []string{"KEY", "--json", "--", "-odd", "--"})
	if err != nil || !*j || len(p.args) != 1 || p.args[0] != "KEY" || !p.hasDash || strings.Join(p.rest, " ") != "-odd --" {
		t.Fatalf("parse = %+v, %v (json %v)", p, err, *j)
	}
	// No "--": everything that is not a flag is an argument.
	fs = newFlagSet("x")
	p, err = parse(fs, []string{"a", "b"})
	if err != nil || p.hasDash || strings.Join(p.args, " ") != "a b" || len(p.rest) != 0 {
		t.Fatalf("parse without --: %+v, %v", p, err)
	}
}

// TestTLSConfig: the TLS files are read by etcd's transport.TLSInfo, with
// microlock's checks around it: a CA file without a certificate, a missing
// file and a certificate without its key are refused before any dial.
func TestTLSConfig(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		conn     connFlags
		want     string
		exitCode int
	}{
		{connFlags{cacert: empty}, "no PEM certificate", exitFailure},
		{connFlags{cacert: filepath.Join(dir, "missing.pem")}, "missing.pem", exitFailure},
		{connFlags{cert: filepath.Join(dir, "c.pem")}, "--cert and --key go together", exitUsage},
		{connFlags{cert: filepath.Join(dir, "c.pem"), key: filepath.Join(dir, "k.pem")}, "c.pem", exitFailure},
	} {
		tc.conn.endpoints = "127.0.0.1:2379"
		_, err := tc.conn.config()
		if err == nil || !strings.HasPrefix(err.Error(), "microlock: ") || !strings.Contains(err.Error(), tc.want) || exitCode(err) != tc.exitCode {
			t.Errorf("config(%+v) = %v (exit %d); want %q, exit %d", tc.conn, err, exitCode(err), tc.want, tc.exitCode)
		}
	}
	// An https:// endpoint alone: TLS against the system's roots, at least 1.2.
	cfg, err := (&connFlags{endpoints: "https://127.0.0.1:2379"}).config()
	if err != nil || cfg.TLS == nil || cfg.TLS.RootCAs != nil || cfg.TLS.InsecureSkipVerify || cfg.TLS.MinVersion < tls.VersionTLS12 {
		t.Fatalf("config of an https endpoint: %+v, %v", cfg.TLS, err)
	}
	// A plain endpoint: no TLS.
	if cfg, err := (&connFlags{endpoints: "127.0.0.1:2379"}).config(); err != nil || cfg.TLS != nil {
		t.Fatalf("config of a plain endpoint: TLS %+v, %v", cfg.TLS, err)
	}
}
