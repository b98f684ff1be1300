//go:build unix

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

// breakNotice is how long a broken holder may take to hear of it: the
// library's key watch reports a deleted key at once, so this is slack for
// a busy machine.
const breakNotice = 2 * time.Second

// firstUnder returns the key under key's lock prefix with the smallest
// create revision, and that revision; nil and 0 when there is none.
func firstUnder(t *testing.T, c *clientv3.Client, key string) ([]byte, int64) {
	t.Helper()
	resp, err := c.Get(ctxTimeout(t, 5*time.Second), key+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0
	}
	return resp.Kvs[0].Key, resp.Kvs[0].CreateRevision
}

// TestBreakRun: `microlock break --force` ends the hold of a `microlock
// run`: break names the holder and its token, the run's command gets
// SIGTERM within breakNotice, and the run exits with 76. On the key, free
// now, break exits with 79 and prints nothing on stdout.
func TestBreakRun(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	holder := startRun(t, marks, childSpec{id: "victim", tick: 5 * time.Millisecond, onSignal: "exit"}, key,
		endpointsFlag(), "--node-id", "victim-node")
	started := waitMark(t, marks, "start", "victim", 20*time.Second)
	token := started.fields[2]

	code, stdout, stderr := runMicrolock(t, "break", endpointsFlag(), "--force", key)
	broke := time.Now()
	if code != 0 {
		t.Fatalf("break --force of a held key: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	for _, want := range []string{`"victim-node"`, "token " + token, fmt.Sprintf("%q", key)} {
		if !strings.Contains(stdout, want) {
			t.Fatalf("break's output lacks %q:\n%s", want, stdout)
		}
	}
	sig := waitMark(t, marks, "sig", "victim", 20*time.Second)
	if d := sig.at.Sub(broke); d > breakNotice {
		t.Fatalf("the broken holder's command got SIGTERM %v after break exited, want within %v", d, breakNotice)
	}
	t.Logf("break exited → the broken run's command got SIGTERM: %v", sig.at.Sub(broke).Round(time.Millisecond))
	if sig.fields[0] != "TERM" {
		t.Fatalf("the broken holder's command got SIG%s, want SIGTERM", sig.fields[0])
	}
	holder.expectExit(20*time.Second, exitLost)
	if msg := holder.stderr.String(); !strings.Contains(msg, "lost") {
		t.Fatalf("the broken run does not say that it lost the lock:\n%s", msg)
	}

	code, stdout, stderr = runMicrolock(t, "break", endpointsFlag(), "--force", key)
	if code != exitFree || stdout != "" || !strings.Contains(stderr, "is free") {
		t.Fatalf("break of a free key: exit %d, stdout %q, stderr %q; want %d, nothing on stdout, and \"is free\"", code, stdout, stderr, exitFree)
	}
}

// TestBreakWithLock: break --json ends the hold of a WithLock in this
// process: fn's ctx is cancelled with a cause that matches ErrLockLost
// within breakNotice, WithLock returns ErrLockLost, and the JSON names the
// broken hold.
func TestBreakWithLock(t *testing.T) {
	t.Parallel()
	key := testKey(t)
	cli := shared.Client(t)
	h, lockErr := holdWithLock(t, cli, key)

	code, stdout, stderr := runMicrolock(t, "break", "--json", "--force", endpointsFlag(), key)
	broke := time.Now()
	if code != 0 {
		t.Fatalf("break --json --force: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	var out brokenJSON
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("break --json printed %q: %v", stdout, err)
	}
	if out.Key != key || out.Holder != "library-node" || out.HolderBytes != len("library-node") || out.HolderTruncated ||
		out.Token != h.token || out.Revision <= out.Token {
		t.Fatalf("break --json: %+v, want key %q, holder library-node, token %d and a later revision", out, key, h.token)
	}

	select {
	case <-h.done:
		d := time.Since(broke)
		if d > breakNotice {
			t.Fatalf("fn's ctx was cancelled %v after break exited, want within %v", d, breakNotice)
		}
		t.Logf("break exited → fn's ctx cancelled: %v", d.Round(time.Millisecond))
	case <-time.After(breakNotice):
		t.Fatalf("fn's ctx was not cancelled within %v of the break", breakNotice)
	}
	if cause := h.cause(); !errors.Is(cause, microlock.ErrLockLost) {
		t.Fatalf("fn's ctx was cancelled with cause %v, want one that matches ErrLockLost", cause)
	}
	select {
	case err := <-lockErr:
		if !errors.Is(err, microlock.ErrLockLost) {
			t.Fatalf("WithLock returned %v, want an error that matches ErrLockLost", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("WithLock did not return within 20 s of the break")
	}
}

// heldByFn is a hold of a WithLock that runs in the test: its token, and
// fn's ctx's Done and Cause.
type heldByFn struct {
	token int64
	done  <-chan struct{}
	cause func() error
}

// holdWithLock takes key with WithLock, as library-node, and returns once
// fn runs. fn waits until its ctx is cancelled; the channel returns
// WithLock's error.
func holdWithLock(t *testing.T, cli *clientv3.Client, key string) (heldByFn, <-chan error) {
	t.Helper()
	heldc := make(chan heldByFn, 1)
	lockErr := make(chan error, 1)
	go func() {
		lockErr <- microlock.WithLock(context.Background(), cli, key, func(ctx context.Context) error {
			m, _ := microlock.FromContext(ctx)
			heldc <- heldByFn{token: m.Token(), done: ctx.Done(), cause: func() error { return context.Cause(ctx) }}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Minute):
				return errors.New("fn was not cancelled within a minute")
			}
		}, microlock.WithNodeID("library-node"), microlock.WithTTL(10*time.Second))
	}()
	select {
	case h := <-heldc:
		return h, lockErr
	case err := <-lockErr:
		t.Fatalf("WithLock: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("WithLock did not take the lock within 20 s")
	}
	return heldByFn{}, nil
}

// TestBreakRefusesWithoutTerminal: without --force, and with no terminal
// on stdin to ask on, break refuses with 77, says why and whom it spared,
// and deletes nothing: the holder still holds, with the same key.
func TestBreakRefusesWithoutTerminal(t *testing.T) {
	t.Parallel()
	key := testKey(t)
	cli := shared.Client(t)
	m, err := microlock.New(cli, key, microlock.WithNodeID("keep-me"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.TryLock(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	before, rev := firstUnder(t, cli, key)

	for _, extra := range [][]string{nil, {"--json"}, {"--force=false"}} {
		args := append([]string{"break", endpointsFlag()}, extra...)
		code, stdout, stderr := runMicrolock(t, append(args, key)...) // stdin is /dev/null
		if code != exitNotConfirmed || stdout != "" {
			t.Fatalf("%q without a terminal: exit %d, stdout %q, stderr %q; want %d and nothing on stdout", args, code, stdout, stderr, exitNotConfirmed)
		}
		for _, want := range []string{"--force", "not a terminal", `"keep-me"`, fmt.Sprintf("token %d", m.Token())} {
			if !strings.Contains(stderr, want) {
				t.Fatalf("%q: the refusal lacks %q:\n%s", args, want, stderr)
			}
		}
	}
	after, rev2 := firstUnder(t, cli, key)
	if string(after) != string(before) || rev2 != rev || keysUnder(t, cli, key) != 1 {
		t.Fatalf("the holder's key changed: %q at %d, then %q at %d", before, rev, after, rev2)
	}
	select {
	case <-m.Done():
		t.Fatalf("the holder lost the lock: %v", m.Err())
	case <-time.After(300 * time.Millisecond):
	}
	if m.Token() != rev {
		t.Fatalf("the holder's token is %d, want %d", m.Token(), rev)
	}
}

// TestBreakHoldGuard: breakHold, given a holder that is no longer the one
// it names, deletes nothing and says who holds the lock now: a key of the
// same name created again (a new hold with a new create revision), another
// holder after the first left, and no holder at all.
func TestBreakHoldGuard(t *testing.T) {
	t.Parallel()
	key := testKey(t)
	cli := shared.Client(t)
	ctx := ctxTimeout(t, 20*time.Second)
	put, del := keyWriter{t, ctx, cli}.put, keyWriter{t, ctx, cli}.del
	holderKey := key + "/a"
	stale := put(holderKey, "old-holder")

	// The same key, created again: the stale revision must not match it.
	del(holderKey)
	fresh := put(holderKey, "new-holder")
	res, err := breakHold(ctx, cli, key, []byte(holderKey), stale)
	if err != nil {
		t.Fatal(err)
	}
	if res.broken || !res.now.locked || string(res.now.holder) != "new-holder" || res.now.token != fresh {
		t.Fatalf("breakHold with a stale revision: %+v, want nothing broken and new-holder (token %d) reported", res, fresh)
	}
	if k, rev := firstUnder(t, cli, key); string(k) != holderKey || rev != fresh {
		t.Fatalf("after a stale break, the first key is %q at %d, want %q at %d", k, rev, holderKey, fresh)
	}

	// The holder left; the next one (another key) holds now.
	next := put(key+"/b", "next-holder")
	del(holderKey)
	res, err = breakHold(ctx, cli, key, []byte(holderKey), fresh)
	if err != nil {
		t.Fatal(err)
	}
	if res.broken || !res.now.locked || string(res.now.holder) != "next-holder" || res.now.token != next {
		t.Fatalf("breakHold of a holder that left: %+v, want nothing broken and next-holder (token %d) reported", res, next)
	}
	if k, rev := firstUnder(t, cli, key); string(k) != key+"/b" || rev != next {
		t.Fatalf("after breaking a holder that left, the first key is %q at %d, want %q at %d", k, rev, key+"/b", next)
	}

	// The right revision breaks the hold; again, it finds the key free.
	res, err = breakHold(ctx, cli, key, []byte(key+"/b"), next)
	if err != nil {
		t.Fatal(err)
	}
	if !res.broken || res.revision <= next || keysUnder(t, cli, key) != 0 {
		t.Fatalf("breakHold of the holder: %+v, %d keys left; want it broken at a revision after %d", res, keysUnder(t, cli, key), next)
	}
	res, err = breakHold(ctx, cli, key, []byte(key+"/b"), next)
	if err != nil {
		t.Fatal(err)
	}
	if res.broken || res.now.locked {
		t.Fatalf("breakHold of a hold already broken: %+v, want nothing broken and the key free", res)
	}
}

// TestBreakUnreachable: an etcd that cannot be reached gives 69.
func TestBreakUnreachable(t *testing.T) {
	t.Parallel()
	code, _, stderr := runMicrolock(t, "break", "--force", "--endpoints", "127.0.0.1:1", "--command-timeout", "500ms", "k")
	if code != exitUnavailable || !strings.Contains(stderr, "127.0.0.1:1") {
		t.Fatalf("exit %d, stderr %q; want %d and the endpoint", code, stderr, exitUnavailable)
	}
}

// keyWriter writes keys for a test, failing it on an error.
type keyWriter struct {
	t   *testing.T
	ctx context.Context
	cli *clientv3.Client
}

// put writes k and returns the revision it was written at.
func (w keyWriter) put(k, v string) int64 {
	w.t.Helper()
	resp, err := w.cli.Put(w.ctx, k, v)
	if err != nil {
		w.t.Fatal(err)
	}
	return resp.Header.Revision
}

func (w keyWriter) del(k string) {
	w.t.Helper()
	if _, err := w.cli.Delete(w.ctx, k); err != nil {
		w.t.Fatal(err)
	}
}
