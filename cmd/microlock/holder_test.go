//go:build unix

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

func holderJSONOf(t *testing.T, key string) holderJSON {
	t.Helper()
	code, stdout, stderr := runMicrolock(t, "holder", endpointsFlag(), "--json", key)
	if code != 0 {
		t.Fatalf("holder --json: exit %d, stderr %q", code, stderr)
	}
	var h holderJSON
	if err := json.Unmarshal([]byte(stdout), &h); err != nil {
		t.Fatalf("holder --json printed %q: %v", stdout, err)
	}
	return h
}

func TestHolder(t *testing.T) {
	t.Parallel()
	key := testKey(t)
	cli := shared.Client(t)

	// Free, in both formats; flags may follow KEY.
	code, stdout, stderr := runMicrolock(t, "holder", key, endpointsFlag())
	if code != 0 || !strings.Contains(stdout, fmt.Sprintf("%q is free", key)) {
		t.Fatalf("holder of a free key: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if h := holderJSONOf(t, key); h.Locked || h.Holder != "" || h.Token != 0 || h.Since != 0 || h.Lease != nil || h.Revision == 0 || h.Key != key {
		t.Fatalf("holder --json of a free key: %+v", h)
	}

	m, err := microlock.New(cli, key, microlock.WithNodeID("node-x"), microlock.WithTTL(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.TryLock(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr = runMicrolock(t, "holder", endpointsFlag(), key)
	for _, want := range []string{
		fmt.Sprintf("%q is locked", key),
		`holder:   "node-x"`,
		fmt.Sprintf("token:    %d", m.Token()),
		fmt.Sprintf("since:    revision %d", m.Token()),
		"granted 5s",
		"waiting:  0",
	} {
		if code != 0 || !strings.Contains(stdout, want) {
			t.Fatalf("holder of a held key: exit %d, stdout lacks %q:\n%s\nstderr: %s", code, want, stdout, stderr)
		}
	}
	// A write elsewhere advances the cluster's revision, not the holder's.
	if _, err := cli.Put(ctxTimeout(t, 5*time.Second), key+"-elsewhere", "x"); err != nil {
		t.Fatal(err)
	}
	defer cli.Delete(context.Background(), key+"-elsewhere")
	h := holderJSONOf(t, key)
	if !h.Locked || h.Holder != "node-x" || h.HolderBytes != 6 || h.HolderTruncated || h.Token != m.Token() ||
		h.Since != m.Token() || h.Revision <= h.Since || h.Waiting != 0 || h.Lease == nil || h.Lease.GrantedTTL != 5 ||
		h.Lease.RemainingTTL < 1 || h.Lease.RemainingTTL > 5 || h.Lease.ID == "" {
		t.Fatalf("holder --json of a held key: %+v (lease %+v), want node-x with token and since %d, and a later revision", h, h.Lease, m.Token())
	}

	expectWaiting(t, cli, key, "node-x")
}

// expectWaiting queues a waiter on key, which holder holds, and checks that
// holder --json counts it.
func expectWaiting(t *testing.T, cli *clientv3.Client, key, holder string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	waiter, err := microlock.New(cli, key, microlock.WithNodeID("node-y"))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = waiter.Lock(ctx)
	}()
	defer func() {
		cancel()
		wg.Wait()
		_ = waiter.Close()
	}()
	eventually(t, 10*time.Second, "a waiter in holder --json", func() error {
		if h := holderJSONOf(t, key); h.Waiting != 1 || h.Holder != holder {
			return fmt.Errorf("%+v", h)
		}
		return nil
	})
}

// TestHolderGarbage: whatever is under the lock's prefix, holder prints it
// quoted and cut, and never fails on it.
func TestHolderGarbage(t *testing.T) {
	t.Parallel()
	key := testKey(t)
	cli := shared.Client(t)
	value := "\x1b[31mred\x1b[0m\xff\xfe\x00" + strings.Repeat("é", 10000)
	if _, err := cli.Put(ctxTimeout(t, 5*time.Second), key+"/garbage", value); err != nil {
		t.Fatal(err)
	}
	defer cli.Delete(context.Background(), key+"/garbage")

	code, stdout, stderr := runMicrolock(t, "holder", endpointsFlag(), key)
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if strings.ContainsAny(stdout, "\x1b\x00") || !utf8.ValidString(stdout) {
		t.Fatalf("raw control or invalid bytes in the output:\n%q", stdout)
	}
	for _, want := range []string{`holder:   "\x1b[31mred`, fmt.Sprintf("(%d bytes in all)", len(value)), "lease:    none"} {
		if !strings.Contains(stdout, want) {
			t.Fatalf("output lacks %q:\n%.300s", want, stdout)
		}
	}
	if len(stdout) > 3*microlock.MaxNodeIDLen {
		t.Fatalf("output is %d bytes long: the value was not cut", len(stdout))
	}

	h := holderJSONOf(t, key)
	if !h.Locked || !h.HolderTruncated || h.HolderBytes != len(value) || h.Lease != nil ||
		!strings.HasPrefix(h.Holder, "\x1b[31mred") || len(h.Holder) > microlock.MaxNodeIDLen+8 {
		t.Fatalf("holder --json of garbage: locked %v, truncated %v, bytes %d, lease %v, holder %.40q (%d bytes)",
			h.Locked, h.HolderTruncated, h.HolderBytes, h.Lease, h.Holder, len(h.Holder))
	}
}

func TestHolderUnreachable(t *testing.T) {
	t.Parallel()
	code, _, stderr := runMicrolock(t, "holder", "--endpoints", "127.0.0.1:1", "--command-timeout", "500ms", "k")
	if code != exitUnavailable || !strings.Contains(stderr, "127.0.0.1:1") {
		t.Fatalf("exit %d, stderr %q; want %d and the endpoint", code, stderr, exitUnavailable)
	}
}
