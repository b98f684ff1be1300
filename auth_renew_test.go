package microlock_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// maxAuthenticates is the most Authenticate calls a phase of
// TestAuthRenewalsDoNotAuthenticate may cost the server, whatever its number
// of renewals or waits: one for each long-lived stream a lease may open in
// one phase (its renewals', its keys' watch; the client's watch stream that
// its waits share), none per request.
const maxAuthenticates = 2

// TestAuthRenewalsDoNotAuthenticate: with username/password authentication,
// lock cycles, renewals, explicit (Mutex.Renew) and automatic, and Locks that
// wait in a queue do not each cost the server an Authenticate call. Authenticate is dear: etcd checks
// the password with bcrypt and then commits a new token through raft. The
// etcd client authenticates again every time it opens a gRPC stream, so a
// request sent on a stream of its own costs one. The calls are counted by the
// server, from its gRPC metrics, and by the client, as a cross-check.
func TestAuthRenewalsDoNotAuthenticate(t *testing.T) {
	const cycles, renewals, autoRenewals, waits = 20, 20, 12, 10
	a := startAuth(t)
	member := a.c.Members[0]
	w, calls := a.counting(t, "writer")
	key := authPrefix + t.Name()
	ctx := ctxTimeout(t, 60*time.Second)
	log := &eventLog{}
	// The shortest TTL etcd grants with the harness's election timeout: an
	// automatic renewal every 2/3 s.
	m := newMutex(t, w, key, microlock.WithTTL(2*time.Second), microlock.OnEvent(log.hook))

	if n := authenticateCalls(t, member); n < 1 {
		t.Fatalf("the server counted %v Authenticate calls after clients logged in: the metric is not the one read here", n)
	}
	phase := authPhases{t: t, member: member, calls: calls}.run

	phase(fmt.Sprintf("%d lock cycles", cycles), true, func() {
		for range cycles {
			if err := m.TryLock(ctx); err != nil {
				t.Fatal(err)
			}
			if err := m.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})

	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	phase(fmt.Sprintf("%d calls of Mutex.Renew", renewals), true, func() {
		for range renewals {
			if err := m.Renew(ctx); err != nil {
				t.Fatal(err)
			}
		}
	})

	phase(fmt.Sprintf("%d automatic renewals", autoRenewals), true, func() {
		awaitRenewals(t, log, autoRenewals)
	})
	if err := m.Err(); err != nil {
		t.Fatalf("the hold was lost: %v", err)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}

	// A Lock that waits watches its predecessor's key through the client's
	// Watch, which opens a watch stream when the client has none open, and
	// so authenticates; the lease keeps one watch open once a hold of it
	// has waited, so that the stream stays open from one wait to the next.
	// The other client's lease opens its streams first, out of the count:
	// a Lock, a Renew (its renewal stream) and an Unlock.
	other := newMutex(t, a.as(t, "writer"), key, microlock.WithTTL(2*time.Second))
	for _, step := range []func(context.Context) error{other.Lock, other.Renew, other.Unlock} {
		if err := step(ctx); err != nil {
			t.Fatal(err)
		}
	}
	phase(fmt.Sprintf("%d Locks that waited for a holder", waits), true, func() {
		waitBehind(ctx, t, m, other, waits)
	})
}

// authPhases counts the Authenticate calls of a test's phases.
type authPhases struct {
	t      *testing.T
	member *etcdtest.Member
	calls  *rpcCounter
}

// run runs fn and logs the Authenticate calls it cost, as the server and
// the client counted them; if asserted, more than maxAuthenticates fail the
// test.
func (p authPhases) run(name string, asserted bool, fn func()) {
	t := p.t
	t.Helper()
	p.calls.snapshot()
	before := authenticateCalls(t, p.member)
	fn()
	server := authenticateCalls(t, p.member) - before
	client := p.calls.snapshot()["Authenticate"]
	t.Logf("%s: %v Authenticate calls counted by the server, %d sent by the client", name, server, client)
	if asserted && server > maxAuthenticates {
		t.Errorf("%s cost the server %v Authenticate calls, want at most %d", name, server, maxAuthenticates)
	}
}

// awaitRenewals waits, for at most 30 s, until log has n more Renewed
// events.
func awaitRenewals(t *testing.T, log *eventLog, n int) {
	want := log.count(microlock.Renewed) + n
	deadline := time.Now().Add(30 * time.Second)
	for log.count(microlock.Renewed) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%d automatic renewals in 30 s, want %d", n-(want-log.count(microlock.Renewed)), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitBehind has m take the lock n times, each time waiting in the queue
// behind other.
func waitBehind(ctx context.Context, t *testing.T, m, other *microlock.Mutex, n int) {
	for range n {
		if err := other.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		got := make(chan error, 1)
		go func() { got <- m.Lock(ctx) }()
		time.Sleep(50 * time.Millisecond) // m waits
		if err := other.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		if err := m.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// authenticateCalls returns how many Authenticate calls member has handled,
// whatever their outcome.
func authenticateCalls(t *testing.T, member *etcdtest.Member) float64 {
	t.Helper()
	n, err := member.GRPCHandled(ctxTimeout(t, 5*time.Second), "Authenticate")
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAuthRenewalsOutliveTheirToken: the renewal stream stays open from one
// renewal to the next, and etcd checks the token it was opened with at every
// renewal. When etcd forgets that token (here: the user's password was
// changed, to the same one, which drops every token of the user), renewals,
// automatic and by Mutex.Renew, go on, on a stream opened with a new token,
// and the hold is not lost.
func TestAuthRenewalsOutliveTheirToken(t *testing.T) {
	a := startAuth(t)
	root := a.as(t, "root")
	w, calls := a.counting(t, "writer")
	ctx := ctxTimeout(t, 30*time.Second)
	log := &eventLog{}
	m := newMutex(t, w, authPrefix+t.Name(), microlock.WithTTL(2*time.Second), microlock.OnEvent(log.hook))
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Renew(ctx); err != nil { // the renewal stream is open
		t.Fatal(err)
	}
	calls.snapshot()
	if _, err := root.UserChangePassword(ctx, "writer", "writer-pw"); err != nil {
		t.Fatal(err)
	}
	// Automatic renewals first: one that failed would end the hold.
	want := log.count(microlock.Renewed) + 2
	for deadline := time.Now().Add(10 * time.Second); log.count(microlock.Renewed) < want; {
		if time.Now().After(deadline) {
			t.Fatalf("no 2 automatic renewals in 10 s after the token was dropped (hold: %v)", m.Err())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := m.Renew(ctx); err != nil {
		t.Fatalf("Renew after the token was dropped: %v", err)
	}
	if err := m.Err(); err != nil {
		t.Fatalf("the hold was lost: %v", err)
	}
	if n := calls.snapshot()["Authenticate"]; n < 1 {
		t.Fatalf("the client sent %d Authenticate calls after its token was dropped: the check proves nothing", n)
	}
	st, err := root.Status(ctx, a.c.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(st.Version, "3.4.") {
		// etcd 3.4 never lets the etcd client (v3.7) recover a token that a
		// password change dropped on a unary request: a plain Put from
		// this client fails the same way until its context ends. The
		// renewals above, on a stream opened again with a new token, are
		// what this test is about; the release is left to the TTL.
		t.Logf("etcd %s: unary requests of this client cannot recover its dropped token; release not checked", st.Version)
		return
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}
