//go:build unix

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

// TestList: every lock held under a prefix, with its holder, token, lease
// time left and waiters (microlock's and etcd's own), and not the locks
// outside it.
func TestList(t *testing.T) {
	t.Parallel()
	prefix := testKey(t) + "/jobs/"
	cli := shared.Client(t)
	ctx := ctxTimeout(t, 30*time.Second)

	code, stdout, stderr := runMicrolock(t, "list", endpointsFlag(), prefix)
	if code != 0 || stdout != fmt.Sprintf("no lock under %q is held\n", prefix) {
		t.Fatalf("list of nothing: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if code, stdout, _ = runMicrolock(t, "list", "--json", endpointsFlag(), prefix); code != 0 || stdout != "" {
		t.Fatalf("list --json of nothing: exit %d, stdout %q", code, stdout)
	}

	lock := func(key, id string) *microlock.Mutex {
		m, err := microlock.New(cli, key, microlock.WithNodeID(id), microlock.WithTTL(20*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close() })
		return m
	}
	a, b := lock(prefix+"a", "node-a"), lock(prefix+"b/c", "node-b")
	for _, m := range []*microlock.Mutex{a, b} {
		if err := m.Lock(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Two waiters on a: one of ours, one of etcd's own layout by hand.
	w := lock(prefix+"a", "node-w")
	wctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- w.Lock(wctx) }()
	defer func() { cancel(); <-errc }()
	lr, err := cli.Grant(ctx, 20)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Revoke(context.Background(), lr.ID)
	if _, err := cli.Put(ctx, fmt.Sprintf("%sa/%x", prefix, lr.ID), "etcdctl", clientv3.WithLease(lr.ID)); err != nil {
		t.Fatal(err)
	}
	// Outside the prefix.
	if err := lock(testKey(t)+"/other", "node-o").Lock(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the waiters", func() error {
		if n := keysUnder(t, cli, prefix+"a"); n != 3 {
			return fmt.Errorf("%d keys under a", n)
		}
		return nil
	})

	code, stdout, stderr = runMicrolock(t, "list", "--json", endpointsFlag(), prefix)
	if code != 0 {
		t.Fatalf("list --json: exit %d, stderr %q", code, stderr)
	}
	var got []holderJSON
	dec := json.NewDecoder(strings.NewReader(stdout))
	for dec.More() {
		var h holderJSON
		if err := dec.Decode(&h); err != nil {
			t.Fatalf("list --json printed %q: %v", stdout, err)
		}
		got = append(got, h)
	}
	want := []struct {
		key, holder string
		token       int64
		waiting     int64
	}{{prefix + "a", "node-a", a.Token(), 2}, {prefix + "b/c", "node-b", b.Token(), 0}}
	if len(got) != len(want) {
		t.Fatalf("list --json: %d locks, want %d:\n%s", len(got), len(want), stdout)
	}
	for i, w := range want {
		g := got[i]
		if g.Key != w.key || g.Holder != w.holder || g.Token != w.token || g.Since != w.token || g.Waiting != w.waiting || !g.Locked ||
			g.Lease == nil || g.Lease.GrantedTTL != 20 || g.Lease.RemainingTTL <= 0 || g.Lease.RemainingTTL > 20 || g.Revision < w.token {
			t.Errorf("lock %d: %+v (lease %+v), want %+v", i, g, g.Lease, w)
		}
	}

	code, stdout, _ = runMicrolock(t, "list", endpointsFlag(), prefix)
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[0], "KEY") {
		t.Fatalf("list: exit %d, stdout:\n%s", code, stdout)
	}
	for i, w := range want {
		f := strings.Fields(lines[i+1])
		if len(f) != 5 || f[0] != fmt.Sprintf("%q", w.key) || f[1] != fmt.Sprintf("%q", w.holder) || f[2] != fmt.Sprint(w.token) ||
			!strings.HasSuffix(f[3], "s") || f[4] != fmt.Sprint(w.waiting) {
			t.Errorf("line %q, want %+v", lines[i+1], w)
		}
	}
}

func TestListUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"list"}, {"list", ""}, {"list", "a/", "b/"}} {
		if code, _, stderr := runMicrolock(t, args...); code != exitUsage || !strings.Contains(stderr, "PREFIX") {
			t.Errorf("%q: exit %d, stderr %q; want %d naming PREFIX", args, code, stderr, exitUsage)
		}
	}
	if code, _, _ := runMicrolock(t, "list", "--endpoints=127.0.0.1:1", "--command-timeout=1s", "x/"); code != exitUnavailable {
		t.Errorf("list with etcd unreachable: exit %d, want %d", code, exitUnavailable)
	}
}
