package microlock_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/microlock/microlock"
)

// A candidateKind is one implementation of etcd's election layout. start
// campaigns for key with value; the candidate's elected attempt finishes
// once it leads.
type candidateKind struct {
	name  string
	start func(t *testing.T, key, value string) *candidate
}

type candidate struct {
	elected  *attempt
	once     sync.Once
	proclaim func(value string) error // nil when the kind cannot
	resign   func()                   // ends the term and waits until it has
}

func (c *candidate) finish(err error) { c.once.Do(func() { c.elected.finish(err) }) }

func candidateKinds() []candidateKind {
	return []candidateKind{
		{"microlock Lead", startLeadCandidate},
		{"concurrency.Election", startElectionCandidate},
		{"etcdctl elect", startEtcdctlCandidate},
		{"v3election service", startGatewayCandidate},
	}
}

var errResigned = errors.New("resigned")

func startLeadCandidate(t *testing.T, key, value string) *candidate {
	c := client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	cd := &candidate{elected: newAttempt()}
	mutex := make(chan *microlock.Mutex, 1)
	resign := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		err := microlock.Lead(ctx, c, key, func(ctx context.Context) error {
			m, _ := microlock.FromContext(ctx)
			mutex <- m
			cd.finish(nil)
			select {
			case <-resign:
				return errResigned
			case <-ctx.Done():
				return ctx.Err()
			}
		}, microlock.WithNodeID(value))
		cd.finish(err)
		done <- err
	}()
	t.Cleanup(func() { cancel(); <-cd.elected.done })
	var m *microlock.Mutex
	cd.proclaim = func(v string) error {
		if m == nil {
			m = <-mutex
		}
		return m.Proclaim(ctx, v)
	}
	cd.resign = func() {
		close(resign)
		if err := <-done; !errors.Is(err, errResigned) {
			t.Errorf("Lead after fn resigned = %v", err)
		}
	}
	return cd
}

func startElectionCandidate(t *testing.T, key, value string) *candidate {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	s, err := concurrency.NewSession(client(t), concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	e := concurrency.NewElection(s, key)
	cd := &candidate{elected: newAttempt()}
	go func() { cd.finish(e.Campaign(ctx, value)) }()
	t.Cleanup(func() { cancel(); <-cd.elected.done; _ = s.Close() })
	cd.proclaim = func(v string) error { return e.Proclaim(ctx, v) }
	cd.resign = func() {
		if err := e.Resign(ctx); err != nil {
			t.Errorf("Election.Resign: %v", err)
		}
	}
	return cd
}

// startEtcdctlCandidate runs `etcdctl elect KEY VALUE`, which prints the
// leader's key and value once elected and resigns on SIGTERM.
func startEtcdctlCandidate(t *testing.T, key, value string) *candidate {
	p := startEtcdctl(t, "elect", key, value)
	cd := &candidate{elected: p.acquired}
	cd.resign = func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		p.wait(t)
	}
	return cd
}

// TestInteropElection: microlock's Lead, etcd's concurrency.Election,
// etcdctl elect and etcd's v3election service exclude each other in every
// order: the second candidate
// waits while the first leads and leads once it resigns, with a higher
// token. Every observer sees every leader and each Proclaim: microlock's
// Watch and Holder, etcd's Election.Leader and Observe, and etcdctl
// elect -l.
func TestInteropElection(t *testing.T) {
	for _, first := range candidateKinds() {
		for _, second := range candidateKinds() {
			if first.name == second.name {
				continue
			}
			t.Run(first.name+" then "+second.name, func(t *testing.T) {
				t.Parallel()
				testElectionPair(t, first, second)
			})
		}
	}
}

func testElectionPair(t *testing.T, first, second candidateKind) {
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 60*time.Second)
	events := watchKey(t, c, key)
	expectEvent(t, events, microlock.Unlocked, "", 0)
	observed := observeElection(t, c, key)
	listener := startEtcdctl(t, "elect", "-l", key)
	s, err := concurrency.NewSession(c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	observer := concurrency.NewElection(s, key)
	seen := func(value string, token int64) {
		t.Helper()
		expectEvent(t, events, microlock.Locked, value, token)
		if ev, err := microlock.Holder(ctx, c, key); err != nil || ev.Holder != value || ev.Token != token {
			t.Fatalf("Holder = %+v, %v; want %q token %d", ev, err, value, token)
		}
		resp, err := observer.Leader(ctx)
		if err != nil || string(resp.Kvs[0].Value) != value || resp.Kvs[0].CreateRevision != token {
			t.Fatalf("Election.Leader = %v, %v; want %q token %d", resp, err, value, token)
		}
	}
	var want []string // what Observe and etcdctl elect -l must see

	c1 := first.start(t, key, "first")
	if err := c1.elected.wait(10 * time.Second); err != nil {
		t.Fatalf("%s: %v", first.name, err)
	}
	_, token1 := holderOf(t, c, key)
	seen("first", token1)
	want = append(want, "first")
	c2 := second.start(t, key, "second")
	if err := c2.elected.wait(500 * time.Millisecond); err != errNotYet {
		t.Fatalf("%s while %s led: %v, want it to wait", second.name, first.name, err)
	}
	if c1.proclaim != nil {
		if err := c1.proclaim("first v2"); err != nil {
			t.Fatalf("%s Proclaim: %v", first.name, err)
		}
		seen("first v2", token1)
		want = append(want, "first v2")
	}
	c1.resign()
	if err := c2.elected.wait(10 * time.Second); err != nil {
		t.Fatalf("%s after %s resigned: %v", second.name, first.name, err)
	}
	_, token2 := holderOf(t, c, key)
	if token2 <= token1 {
		t.Fatalf("second leader's token %d, not above the first's %d", token2, token1)
	}
	seen("second", token2)
	want = append(want, "second")
	if c2.proclaim != nil {
		if err := c2.proclaim("second v2"); err != nil {
			t.Fatalf("%s Proclaim: %v", second.name, err)
		}
		seen("second v2", token2)
		want = append(want, "second v2")
	}
	expectObserved(t, observed, want)
	expectListened(t, listener, want)
	c2.resign()
	expectEvent(t, events, microlock.Unlocked, "", 0)
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("keys left: %q", keys)
	}
}

// observeElection runs etcd's Election.Observe on key until the end of the
// test and sends each value it reports.
func observeElection(t *testing.T, c *clientv3.Client, key string) <-chan string {
	s, err := concurrency.NewSession(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan string, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for resp := range concurrency.NewElection(s, key).Observe(ctx) {
			out <- string(resp.Kvs[0].Value)
		}
	}()
	t.Cleanup(func() { cancel(); <-done; _ = s.Close() })
	return out
}

func expectObserved(t *testing.T, observed <-chan string, want []string) {
	t.Helper()
	for _, w := range want {
		if got := recv(t, observed, "Observe value "+w); got != w {
			t.Fatalf("Election.Observe reported %q, want %q (all: %q)", got, w, want)
		}
	}
}

// expectListened waits until `etcdctl elect -l` has printed each value of
// want, in order, each after its leader's key.
func expectListened(t *testing.T, p *ctlProc, want []string) {
	t.Helper()
	var lines []string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		p.out.mu.Lock()
		lines = strings.Split(strings.TrimSuffix(p.out.buf.String(), "\n"), "\n")
		p.out.mu.Unlock()
		var values []string
		for i := 1; i < len(lines); i += 2 {
			values = append(values, lines[i])
		}
		if strings.Join(values, "|") == strings.Join(want, "|") {
			return
		}
	}
	t.Fatalf("etcdctl elect -l printed %q, want the values %q", lines, want)
}

// startGatewayCandidate campaigns through etcd's own v3election service, the
// server-side Election, by its JSON gateway (/v3/election/...): its
// generated client lives in etcd's server module, which this module does
// not depend on. The candidate's lease is kept alive by the etcd client.
func startGatewayCandidate(t *testing.T, key, value string) *candidate {
	c := client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	lease, err := c.Grant(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	ka, err := c.KeepAlive(ctx, lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	cd := &candidate{elected: newAttempt()}
	var leader json.RawMessage // the service's LeaderKey, once elected
	call := func(ctx context.Context, method string, req, resp any) error {
		b, _ := json.Marshal(req)
		hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, shared.Endpoints()[0]+"/v3/election/"+method, bytes.NewReader(b))
		if err != nil {
			return err
		}
		hresp, err := http.DefaultClient.Do(hreq)
		if err != nil {
			return err
		}
		defer hresp.Body.Close()
		body, err := io.ReadAll(hresp.Body)
		if err != nil {
			return err
		}
		if hresp.StatusCode != http.StatusOK {
			return fmt.Errorf("v3election %s: %s: %s", method, hresp.Status, body)
		}
		return json.Unmarshal(body, resp)
	}
	go func() {
		var resp struct {
			Leader json.RawMessage `json:"leader"`
		}
		err := call(ctx, "campaign", map[string]any{"name": []byte(key), "lease": int64(lease.ID), "value": []byte(value)}, &resp)
		leader = resp.Leader
		cd.finish(err)
	}()
	t.Cleanup(func() {
		cancel()
		<-cd.elected.done
		for range ka {
		}
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer rcancel()
		_, _ = c.Revoke(rctx, lease.ID)
	})
	cd.proclaim = func(v string) error {
		var resp json.RawMessage
		return call(ctx, "proclaim", map[string]any{"leader": leader, "value": []byte(v)}, &resp)
	}
	cd.resign = func() {
		var resp json.RawMessage
		if err := call(ctx, "resign", map[string]any{"leader": leader}, &resp); err != nil {
			t.Errorf("v3election resign: %v", err)
		}
	}
	return cd
}
