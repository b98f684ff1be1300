package etcdtest_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/microlock/microlock/internal/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// eventually retries fn every 100 ms until it succeeds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, fn func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := fn(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestSingleNode(t *testing.T) {
	c := etcdtest.Start(t, 1)
	m := c.Members[0]
	if m.ID() == 0 || m.PID() == 0 {
		t.Fatalf("member %s: ID %x, PID %d; want both set", m.Name, m.ID(), m.PID())
	}
	cli := c.Client(t)
	ctx := ctxTimeout(t, 5*time.Second)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("Get k = %v, want v", resp.Kvs)
	}

	// etcdctl is built from the same pinned tools module and talks to it.
	ctl, err := etcdtest.EtcdctlBinary()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, ctl, "--endpoints", m.ClientURL, "get", "k", "--print-value-only").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "v" {
		t.Fatalf("etcdctl get k = %q, %v; want v", out, err)
	}
}

func TestKillRestartLeader(t *testing.T) {
	c := etcdtest.Start(t, 3)
	cli := c.Client(t)
	leader, err := c.Leader(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctxTimeout(t, 5*time.Second), "before", "1"); err != nil {
		t.Fatal(err)
	}

	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	if leader.PID() != 0 {
		t.Fatalf("killed member still has PID %d", leader.PID())
	}
	eventually(t, 10*time.Second, "Put with the leader killed", func(ctx context.Context) error {
		_, err := cli.Put(ctx, "during", "1")
		return err
	})
	next, err := c.Leader(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if next == leader {
		t.Fatalf("killed member %s is still the leader", leader.Name)
	}

	if err := leader.Restart(); err != nil {
		t.Fatal(err)
	}
	// The restarted member serves linearizable reads of what was written
	// while it was down.
	resp, err := c.Client(t, leader.ClientURL).Get(ctxTimeout(t, 5*time.Second), "during")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("restarted member: Get during = %v, want one key", resp.Kvs)
	}
}

func TestProxyBlackholeHeal(t *testing.T) {
	c := etcdtest.Start(t, 1)
	p := etcdtest.NewProxy(t, c.Members[0].ClientURL)
	if p.URL() != "http://"+p.Addr() {
		t.Fatalf("URL %q does not match Addr %q", p.URL(), p.Addr())
	}
	cli := c.Client(t, p.URL())
	if _, err := cli.Put(ctxTimeout(t, 5*time.Second), "k", "v"); err != nil {
		t.Fatal(err)
	}

	p.Blackhole()
	// Both the open connection and a new one are silent until the deadline.
	for _, cli := range []*clientv3.Client{cli, c.Client(t, p.URL())} {
		start := time.Now()
		_, err := cli.Get(ctxTimeout(t, time.Second), "k")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Get through blackholed proxy: %v, want DeadlineExceeded", err)
		}
		if d := time.Since(start); d < 900*time.Millisecond {
			t.Fatalf("Get through blackholed proxy failed after %v, before its deadline", d)
		}
	}

	p.Heal()
	if _, err := c.Client(t, p.URL()).Get(ctxTimeout(t, 5*time.Second), "k"); err != nil {
		t.Fatalf("Get through healed proxy: %v", err)
	}
	// The old client recovers too: Heal closed its corrupt connection.
	eventually(t, 10*time.Second, "old client after Heal", func(ctx context.Context) error {
		_, err := cli.Get(ctx, "k")
		return err
	})

	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestIsolate(t *testing.T) {
	c := etcdtest.Start(t, 3, etcdtest.WithPeerProxies())
	leader, err := c.Leader(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// The leader first, since it must notice by itself that it lost its
	// quorum; then a follower.
	victims := []*etcdtest.Member{leader}
	for _, m := range c.Members {
		if m != leader {
			victims = append(victims, m)
			break
		}
	}
	for _, victim := range victims {
		var others []string
		for _, m := range c.Members {
			if m != victim {
				others = append(others, m.ClientURL)
			}
		}
		cut := c.Client(t, victim.ClientURL)
		rest := c.Client(t, others...)

		c.Isolate(victim)
		start := time.Now()
		if _, err := cut.Get(ctxTimeout(t, 3*time.Second), "k"); err == nil {
			t.Fatalf("isolated member %s served a linearizable Get", victim.Name)
		}
		t.Logf("isolated %s: Get failed after %v", victim.Name, time.Since(start).Round(time.Millisecond))
		eventually(t, 10*time.Second, "Put through the majority", func(ctx context.Context) error {
			_, err := rest.Put(ctx, "k", victim.Name)
			return err
		})

		c.HealPeers()
		start = time.Now()
		eventually(t, 10*time.Second, "Get through the healed member", func(ctx context.Context) error {
			resp, err := cut.Get(ctx, "k")
			if err == nil && (len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != victim.Name) {
				err = fmt.Errorf("got %v, want %s", resp.Kvs, victim.Name)
			}
			return err
		})
		t.Logf("healed %s: serving after %v", victim.Name, time.Since(start).Round(time.Millisecond))
	}
}

func TestPauseResume(t *testing.T) {
	c := etcdtest.Start(t, 1)
	m := c.Members[0]
	cli := c.Client(t)
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Get(ctxTimeout(t, time.Second), "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Get from paused member: %v, want DeadlineExceeded", err)
	}
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Get(ctxTimeout(t, 5*time.Second), "k"); err != nil {
		t.Fatalf("Get from resumed member: %v", err)
	}
	// Left paused on purpose: Cleanup must still kill it.
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
}

func TestKillRestartAll(t *testing.T) {
	c := etcdtest.Start(t, 3)
	if _, err := c.Client(t).Put(ctxTimeout(t, 5*time.Second), "k", "v"); err != nil {
		t.Fatal(err)
	}
	for _, m := range c.Members {
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Members[0].Kill(); err == nil {
		t.Fatal("Kill of a dead member succeeded")
	}
	// One at a time: the first two cannot serve a linearizable Get until a
	// quorum is back, and Restart must not wait for that.
	for _, m := range c.Members {
		if err := m.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := c.Client(t).Get(ctxTimeout(t, 5*time.Second), "k")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("Get k after restarting all = %v, %v", resp, err)
	}
}
