package microlock_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// tlsSetup is a single-node etcd that serves clients over TLS only and
// requires a client certificate signed by its CA.
type tlsSetup struct {
	c      *etcdtest.Cluster
	ca     *pki
	server issued
	client issued // signed by ca
}

func startTLS(t *testing.T) *tlsSetup {
	t.Helper()
	ca := newPKI(t, "microlock-test")
	s := &tlsSetup{ca: ca, server: ca.server(t, "etcd"), client: ca.client(t, "worker")}
	s.c = etcdtest.Start(t, 1, etcdtest.WithClientTLS(etcdtest.ClientTLS{
		CertFile:     s.server.CertFile,
		KeyFile:      s.server.KeyFile,
		ClientCAFile: ca.CAFile,
		Config:       &tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{s.client.TLS}},
	}))
	return s
}

// TestTLSClientCertificate: over client TLS with a client certificate, the
// whole lock life cycle works: WithLock, TryLock, Renew, Unlock, Watch, and
// a second node is refused while the first holds.
func TestTLSClientCertificate(t *testing.T) {
	s := startTLS(t)
	if ep := s.c.Endpoints()[0]; !strings.HasPrefix(ep, "https://") {
		t.Fatalf("endpoint %s is not https", ep)
	}
	cli := s.c.Client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)

	wctx, cancel := context.WithCancel(ctx)
	events, err := microlock.Watch(wctx, cli, key)
	if err != nil {
		t.Fatal(err)
	}
	defer drain(t, cancel, events)
	expectEvent(t, events, microlock.Unlocked, "", 0)

	var token int64
	err = microlock.WithLock(ctx, cli, key, func(ctx context.Context) error {
		m, _ := microlock.FromContext(ctx)
		token = m.Token()
		// A fenced write, the way users are told to write under the lock.
		resp, err := cli.Txn(ctx).If(m.IsOwner()).Then(clientv3.OpPut(key+"-data", "x")).Commit()
		if err == nil && !resp.Succeeded {
			err = errors.New("fenced write refused while holding the lock")
		}
		return err
	}, microlock.WithNodeID("tls-a"))
	if err != nil || token == 0 {
		t.Fatalf("WithLock over TLS = %v (token %d)", err, token)
	}
	expectEvent(t, events, microlock.Locked, "tls-a", token)
	expectEvent(t, events, microlock.Unlocked, "", 0)

	a := newMutex(t, cli, key, microlock.WithNodeID("tls-a"), microlock.WithTTL(2*time.Second))
	b := newMutex(t, s.c.Client(t), key, microlock.WithNodeID("tls-b"))
	if err := a.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, events, microlock.Locked, "tls-a", a.Token())
	var ale *microlock.AlreadyLockedError
	if err := b.TryLock(ctx); !errors.As(err, &ale) || ale.Holder != "tls-a" || ale.Token != a.Token() {
		t.Fatalf("second node's TryLock = %v, want *AlreadyLockedError naming tls-a, token %d", err, a.Token())
	}
	if err := a.Renew(ctx); err != nil {
		t.Fatalf("Renew over TLS: %v", err)
	}
	// Past the TTL, so the automatic renewal over TLS kept the hold.
	time.Sleep(3 * time.Second)
	if err := a.Err(); err != nil {
		t.Fatalf("hold lost over TLS: %v", err)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	expectEvent(t, events, microlock.Unlocked, "", 0)
	if keys := keysUnder(t, cli, key); len(keys) != 0 {
		t.Fatalf("keys left: %q", keys)
	}
}

// TestTLSRefused: a client that does not trust the server's CA, or that has
// no acceptable client certificate, gets a prompt microlock: error from
// TryLock, Lock, WithLock and Watch, runs nothing and leaves nothing behind.
//
// The error says only that the deadline passed: etcd's client turns every
// failed call on a connection it could not establish into the caller's
// context error, so the TLS reason never reaches microlock's return values.
// The reason is in the client's log, at warning level, which the test
// checks so that the README can send users there.
func TestTLSRefused(t *testing.T) {
	s := startTLS(t)
	other := newPKI(t, "someone-else")
	cases := []struct {
		name string
		cfg  *tls.Config
		why  []string // one of them is in the client's log
	}{
		{"wrong CA", &tls.Config{RootCAs: other.Pool, Certificates: []tls.Certificate{s.client.TLS}},
			[]string{"x509: certificate signed by unknown authority"}},
		// The server refuses these after the client has finished its side of
		// the TLS 1.3 handshake: depending on timing, the client reads the
		// server's alert or finds the connection closed.
		{"client certificate from another CA", &tls.Config{RootCAs: s.ca.Pool, Certificates: []tls.Certificate{other.client(t, "intruder").TLS}},
			[]string{"tls: certificate required", "broken pipe", "connection reset", "EOF"}},
		{"no client certificate", &tls.Config{RootCAs: s.ca.Pool},
			[]string{"tls: certificate required", "broken pipe", "connection reset", "EOF"}},
	}
	key := testKey(t)
	root := s.c.Client(t)
	t.Cleanup(func() {
		if keys := keysUnder(t, root, key); len(keys) != 0 {
			t.Errorf("keys left: %q", keys)
		}
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			core, logs := observer.New(zap.WarnLevel)
			cli, err := clientv3.New(clientv3.Config{
				Endpoints:   s.c.Endpoints(),
				DialTimeout: 2 * time.Second,
				Logger:      zap.New(core),
				TLS:         tc.cfg,
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cli.Close() })
			run := func(what string, f func(ctx context.Context) error) { expectRefused(t, what, f) }
			m := newMutex(t, cli, key, microlock.WithTTL(time.Second))
			run("TryLock", m.TryLock)
			run("Lock", m.Lock)
			run("WithLock", func(ctx context.Context) error {
				return microlock.WithLock(ctx, cli, key, func(context.Context) error {
					t.Error("fn ran without the lock")
					return nil
				}, microlock.WithTTL(time.Second))
			})
			run("Watch", func(ctx context.Context) error {
				_, err := microlock.Watch(ctx, cli, key)
				return err
			})
			checkLogSays(t, logs, tc.why)
		})
	}
}

// refusedWait is how long each call of TestTLSRefused may try.
const refusedWait = 2 * time.Second

// expectRefused runs f with refusedWait to go, and checks that it fails
// with a microlock: error that says the deadline passed or names the
// certificate problem, in about that time.
func expectRefused(t *testing.T, what string, f func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), refusedWait)
	defer cancel()
	start := time.Now()
	err := f(ctx)
	took := time.Since(start)
	t.Logf("%s after %v: %v", what, took.Round(time.Millisecond), err)
	if err == nil || !strings.HasPrefix(err.Error(), "microlock: ") {
		t.Errorf("%s = %v, want a microlock: error", what, err)
	}
	if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "certificate") {
		t.Errorf("%s = %v, want it to match context.DeadlineExceeded or name the certificate problem", what, err)
	}
	if took > refusedWait+2*time.Second {
		t.Errorf("%s took %v, past its %v deadline", what, took, refusedWait)
	}
}

// checkLogSays checks that one of the client's logged errors contains one
// of why.
func checkLogSays(t *testing.T, logs *observer.ObservedLogs, why []string) {
	t.Helper()
	for _, e := range logs.All() {
		msg, _ := e.ContextMap()["error"].(string)
		if slices.ContainsFunc(why, func(w string) bool { return strings.Contains(msg, w) }) {
			t.Logf("the client's log says: %s", msg)
			return
		}
	}
	var msgs []string
	for _, e := range logs.All() {
		msgs = append(msgs, fmt.Sprint(e.ContextMap()["error"]))
	}
	t.Errorf("the client's log says none of %q; it says:\n%s", why, strings.Join(msgs, "\n"))
}
