package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// The tests in this file pause an etcd member (SIGSTOP) exactly when a given
// request of the lock path is sent to it, and check that the request costs a
// retry on another member rather than a stalled Unlock, Close, TryLock or
// queue. The client under test (a probe) starts with the paused member as its
// only endpoint, so the request the fault is aimed at goes there for sure;
// the other members are added to its endpoints while that request is stuck,
// and the client's round-robin balancer sends the retry to whichever member is
// next. Each test asserts that the operation ends well before the old stall,
// with the paused member still paused, and that the lock's state is right.

const (
	// livenessTTL gives an attempt timeout of 333 ms (attemptTimeout).
	livenessTTL = 2 * time.Second
	// widenAfter is how long after the pause the other members are added to
	// the probe's endpoints: the request the fault was aimed at is on its way
	// to the paused member by then.
	widenAfter = 100 * time.Millisecond
	// stallCtx bounds the operation under test. The code before the fix
	// waited this long, the whole of its context.
	stallCtx = 6 * time.Second
	// bound is how long an operation may take after the pause: five rounds
	// of an attempt timeout and a retry. The client's balancer sends a retry
	// to the paused member again when the requests in between (renewals,
	// say) made it come round; five in a row are unlikely.
	bound = 2 * time.Second
)

// opts are the tests' Mutex options: a constant backoff, so that every
// retry costs the same and bound holds as many as it can.
func opts(more ...microlock.Option) []microlock.Option {
	return append([]microlock.Option{
		microlock.WithTTL(livenessTTL),
		microlock.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(50 * time.Millisecond) }),
	}, more...)
}

// rig is a 3-member cluster with one follower to pause.
type rig struct {
	cl     *etcdtest.Cluster
	f      *etcdtest.Member   // the follower that is paused
	rest   []*etcdtest.Member // the others, leader included
	direct *clientv3.Client   // reaches the others only
	names  map[string]string  // client address → member name
}

func newRig(t *testing.T) *rig {
	t.Helper()
	cl := etcdtest.Start(t, 3)
	leader, err := cl.Leader(ctxTimeout(t, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{cl: cl, names: make(map[string]string)}
	for _, m := range cl.Members {
		r.names[hostOf(m.ClientURL)] = m.Name
		if m != leader && r.f == nil {
			r.f = m
		} else {
			r.rest = append(r.rest, m)
		}
	}
	var eps []string
	for _, m := range r.rest {
		eps = append(eps, m.ClientURL)
	}
	r.direct = cl.Client(t, eps...)
	return r
}

func hostOf(u string) string {
	if p, err := url.Parse(u); err == nil && p.Host != "" {
		return p.Host
	}
	return u
}

// resume continues the paused follower, if it is paused. Tests defer it, so
// that it runs before the Cleanups that close Mutexes and clients: those
// would otherwise wait for requests sent to the paused member.
func (r *rig) resume() { _ = r.f.Resume() }

// probeHooks aim the fault. Each is optional and runs in the goroutine that
// sends the request.
type probeHooks struct {
	// pauseAt reports whether the unary request req is the one to pause the
	// follower for, just before it is sent.
	pauseAt func(req any) bool
	// pauseAtWatch pauses the follower just before the first Watch stream is
	// opened.
	pauseAtWatch bool
	// replied runs after a unary request req was answered without error.
	replied func(req any)
	// loseReply reports whether the answer to the unary request req, once
	// it has been applied, is to be lost: the caller then sees no answer
	// until its context ends. Only the first such request loses it.
	loseReply func(req any) bool
}

// probe is a client under test whose only endpoint is the rig's follower
// until widen. It logs where each request went, and pauses the follower once
// its hooks say so, after arm.
type probe struct {
	*clientv3.Client
	t       *testing.T
	r       *rig
	hooks   probeHooks
	armed   atomic.Bool
	once    sync.Once
	lost    atomic.Bool   // a reply was lost
	faulted chan struct{} // closed once the follower is paused
	at      time.Time     // when; read after faulted

	mu      sync.Mutex
	log     []string
	created map[string]int // watches created, by member name
}

func (r *rig) probe(t *testing.T, hooks probeHooks) *probe {
	t.Helper()
	p := &probe{t: t, r: r, hooks: hooks, faulted: make(chan struct{}), created: make(map[string]int)}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{r.f.ClientURL},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(p.unary),
			grpc.WithChainStreamInterceptor(p.stream),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Close()
		if t.Failed() || testing.Verbose() {
			t.Logf("requests of the client under test (%s is the member to pause):\n%s", r.f.Name, p.requests())
		}
	})
	p.Client = c
	return p
}

func (p *probe) arm() { p.armed.Store(true) }

func (p *probe) pause() {
	p.once.Do(func() {
		if err := p.r.f.Pause(); err != nil {
			p.t.Errorf("pausing %s: %v", p.r.f.Name, err) // not Fatal: this is not the test's goroutine
		}
		p.at = time.Now()
		p.logf("--- %s paused", p.r.f.Name)
		close(p.faulted)
	})
}

// widen waits for the fault, lets the request it was aimed at reach the
// paused member, and then gives the client every member as an endpoint. It
// returns the time of the fault.
func (p *probe) widen(t *testing.T, errc <-chan error) time.Time {
	t.Helper()
	select {
	case <-p.faulted:
	case err := <-errc:
		t.Fatalf("the operation ended (%v) before the request that the fault was aimed at", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the request that the fault was aimed at was never sent")
	}
	time.Sleep(widenAfter)
	eps := []string{p.r.f.ClientURL}
	for _, m := range p.r.rest {
		eps = append(eps, m.ClientURL)
	}
	p.SetEndpoints(eps...)
	p.logf("--- endpoints: %s", strings.Join(eps, " "))
	return p.at
}

func (p *probe) logf(format string, args ...any) {
	p.mu.Lock()
	p.log = append(p.log, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, args...))
	p.mu.Unlock()
}

func (p *probe) requests() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.log, "\n")
}

func (p *probe) member(pr *peer.Peer) string {
	if pr == nil || pr.Addr == nil {
		return "?"
	}
	if name, ok := p.r.names[pr.Addr.String()]; ok {
		return name
	}
	return pr.Addr.String()
}

// createdElsewhere returns how many watches members other than the paused
// one have created for the probe, and how many all members have.
func (p *probe) createdElsewhere() (elsewhere, all int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, k := range p.created {
		if name != p.r.f.Name {
			elsewhere += k
		}
		all += k
	}
	return elsewhere, all
}

func (p *probe) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	armed := p.armed.Load()
	if armed && p.hooks.pauseAt != nil && p.hooks.pauseAt(req) {
		p.pause()
	}
	var pr peer.Peer
	start := time.Now()
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&pr))...)
	outcome := "ok"
	if err != nil {
		outcome = err.Error()
	}
	p.logf("%s %s → %s in %v: %s", method[strings.LastIndex(method, "/")+1:], describe(req), p.member(&pr), time.Since(start).Round(time.Millisecond), outcome)
	if armed && err == nil && p.hooks.replied != nil {
		p.hooks.replied(req)
	}
	if armed && err == nil && p.hooks.loseReply != nil && p.hooks.loseReply(req) && p.lost.CompareAndSwap(false, true) {
		<-ctx.Done()
		p.logf("    (its reply lost: the caller gave up after %v)", time.Since(start).Round(time.Millisecond))
		return status.FromContextError(ctx.Err()).Err()
	}
	return err
}

func (p *probe) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if method != "/etcdserverpb.Watch/Watch" {
		return streamer(ctx, desc, cc, method, opts...)
	}
	if p.armed.Load() && p.hooks.pauseAtWatch {
		p.pause()
	}
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		p.logf("Watch stream: %v", err)
		return cs, err
	}
	pr, _ := peer.FromContext(cs.Context())
	p.logf("Watch stream opened → %s", p.member(pr))
	return &probeStream{ClientStream: cs, p: p}, nil
}

// probeStream logs the watches a Watch stream creates, by member.
type probeStream struct {
	grpc.ClientStream
	p *probe
}

func (s *probeStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if wr, ok := m.(*pb.WatchResponse); ok && err == nil && wr.Created {
		pr, _ := peer.FromContext(s.Context())
		name := s.p.member(pr)
		s.p.mu.Lock()
		s.p.created[name]++
		s.p.mu.Unlock()
		s.p.logf("Watch created on %s, revision %d", name, wr.Header.GetRevision())
	}
	return err
}

// The requests of the lock path, told apart by their shape.

// isEnqueue: a Txn putting our key if it does not exist, and reading the last key.
func isEnqueue(req any) bool {
	t, ok := req.(*pb.TxnRequest)
	return ok && len(t.Compare) == 1 && t.Compare[0].Target == pb.Compare_CREATE && len(t.Compare[0].RangeEnd) == 0 &&
		len(t.Success) == 2 && t.Success[1].GetRequestPut() != nil
}

// isCatchUp: waitDelete's read of the predecessor and our own key.
func isCatchUp(req any) bool {
	t, ok := req.(*pb.TxnRequest)
	return ok && len(t.Compare) == 0 && len(t.Success) == 2 &&
		t.Success[0].GetRequestRange() != nil && t.Success[1].GetRequestRange() != nil
}

// isTryLock: a Txn comparing a whole prefix and putting our key.
func isTryLock(req any) bool {
	t, ok := req.(*pb.TxnRequest)
	return ok && len(t.Compare) == 1 && len(t.Compare[0].RangeEnd) != 0 &&
		len(t.Success) == 1 && t.Success[0].GetRequestPut() != nil
}

// isRelease: the guarded delete of a hold's key.
func isRelease(req any) bool {
	t, ok := req.(*pb.TxnRequest)
	return ok && len(t.Compare) == 1 && t.Compare[0].Target == pb.Compare_CREATE &&
		len(t.Success) == 1 && t.Success[0].GetRequestDeleteRange() != nil
}

// isAbandon: the unguarded delete of a key whose write's outcome is unknown.
func isAbandon(req any) bool {
	d, ok := req.(*pb.DeleteRangeRequest)
	return ok && len(d.RangeEnd) == 0
}

// isRecheck: waitTurn's read of our own key and the one just ahead.
func isRecheck(req any) bool {
	g, ok := req.(*pb.RangeRequest)
	return ok && g.Limit == 2 && g.MaxCreateRevision > 0
}

func describe(req any) string {
	switch {
	case isEnqueue(req):
		return "(enqueue)"
	case isCatchUp(req):
		return "(catch-up)"
	case isTryLock(req):
		return "(trylock)"
	case isRelease(req):
		return "(release)"
	case isRecheck(req):
		return "(recheck)"
	case isAbandon(req):
		return "(abandon)"
	}
	return ""
}

// timed runs op in a goroutine and returns its error channel.
func timed(op func() error) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- op() }()
	return errc
}

// within waits for errc and returns the time since from and the error.
func within(t *testing.T, errc <-chan error, from time.Time) (time.Duration, error) {
	t.Helper()
	select {
	case err := <-errc:
		return time.Since(from), err
	case <-time.After(stallCtx + 5*time.Second):
		t.Fatal("the operation did not even end with its context")
		return 0, nil
	}
}

// waitKeys polls until the keys under key's prefix number n.
func waitKeys(t *testing.T, c *clientv3.Client, key string, n int, d time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		keys := keysUnder(t, c, key)
		if len(keys) == n || time.Now().After(deadline) {
			return keys
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLivenessReleasePausedMember: the release Txn sent to a paused member
// costs a retry on another one, for all three callers of release. Before,
// Unlock waited for as long as its context allowed, and WithLock and Close
// for ReleaseTimeout, before giving up on a key that the TTL then freed.
func TestLivenessReleasePausedMember(t *testing.T) {
	r := newRig(t)
	check := func(t *testing.T, key, what string, err error, took time.Duration) {
		t.Helper()
		t.Logf("%s returned %v, %v after the pause", what, err, took.Round(time.Millisecond))
		if err != nil || took > bound {
			t.Fatalf("%s = %v after %v with a member paused, want nil within %v", what, err, took.Round(time.Millisecond), bound)
		}
		if keys := keysUnder(t, r.direct, key); len(keys) != 0 {
			t.Fatalf("keys after %s: %q, want none", what, keys)
		}
	}
	hooks := probeHooks{pauseAt: isRelease}

	x := releasePausedCase{r, hooks, check}
	t.Run("Unlock", x.unlock)

	t.Run("WithLock", x.withLock)

	t.Run("Close", x.close)
}

// releasePausedCase is what the subtests of TestLivenessReleasePausedMember
// share: the rig, the hooks that pause the member a release goes to, and
// the check of a release's outcome.
type releasePausedCase struct {
	r     *rig
	hooks probeHooks
	check func(*testing.T, string, string, error, time.Duration)
}

// unlock: Unlock's release costs a retry, reported as a Retrying event,
// and ends the hold as released.
func (x releasePausedCase) unlock(t *testing.T) {
	r, hooks, check := x.r, x.hooks, x.check
	defer r.resume()
	p := r.probe(t, hooks)
	key := testKey(t)
	log := &eventLog{}
	m := newMutex(t, p.Client, key, opts(microlock.OnEvent(log.hook))...)
	if err := m.Lock(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	p.arm()
	ctx := ctxTimeout(t, stallCtx)
	errc := timed(func() error { return m.Unlock(ctx) })
	took, err := within(t, errc, p.widen(t, errc))
	check(t, key, "Unlock", err, took)
	if m.Err() != nil || log.count(microlock.Released) != 1 || log.count(microlock.Lost) != 0 {
		t.Fatalf("after Unlock: Err() = %v, %d Released and %d Lost events, want nil, 1 and 0",
			m.Err(), log.count(microlock.Released), log.count(microlock.Lost))
	}
	select {
	case <-m.Done():
	default:
		t.Fatal("Done() is not closed after Unlock")
	}
	retries := log.of(microlock.Retrying)
	if len(retries) == 0 || !strings.Contains(retries[0].Err.Error(), "microlock: releasing") ||
		!errors.Is(retries[0].Err, context.DeadlineExceeded) {
		t.Fatalf("Retrying events %v, want one for the release's timed-out attempt", retries)
	}
}

// withLock: WithLock's release after fn returns costs a retry.
func (x releasePausedCase) withLock(t *testing.T) {
	r, hooks, check := x.r, x.hooks, x.check
	defer r.resume()
	p := r.probe(t, hooks)
	key := testKey(t)
	var returned time.Time
	errc := timed(func() error {
		return microlock.WithLock(ctxTimeout(t, stallCtx+5*time.Second), p.Client, key, func(context.Context) error {
			p.arm()
			returned = time.Now()
			return nil
		}, opts()...)
	})
	p.widen(t, errc)
	_, err := within(t, errc, time.Time{})
	check(t, key, "WithLock's release", err, time.Since(returned))
}

// close: Close's release costs a retry, and its revoke (attempts of its
// own, within revokeTimeout) at most 2 s more.
func (x releasePausedCase) close(t *testing.T) {
	r, hooks, check := x.r, x.hooks, x.check
	defer r.resume()
	p := r.probe(t, hooks)
	key := testKey(t)
	released := make(chan microlock.Event, 1)
	m, err := microlock.New(p.Client, key, opts(microlock.OnEvent(func(ev microlock.Event) {
		if ev.Type == microlock.Released {
			released <- ev
		}
	}))...)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Lock(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	p.arm()
	errc := timed(m.Close)
	at := p.widen(t, errc)
	var ev microlock.Event
	select {
	case ev = <-released:
	case <-time.After(stallCtx):
		t.Fatal("no Released event")
	}
	check(t, key, "Close's release", ev.Err, time.Since(at))
	// Close then revokes the lease, in attempts within 2 s (revokeTimeout),
	// the first of which may go to the paused member.
	took, err := within(t, errc, at)
	t.Logf("Close returned %v, %v after the pause", err, took.Round(time.Millisecond))
	if err != nil || took > bound+2*time.Second {
		t.Fatalf("Close = %v after %v, want nil within %v", err, took.Round(time.Millisecond), bound+2*time.Second)
	}
}

// TestLivenessReleaseReplyLost: a release whose first attempt deleted the key
// but whose answer never came (a member that paused after applying it looks
// the same) is retried; the retry finds the key gone, and that is a release,
// not a loss: the guarded delete can only have removed this hold's key.
func TestLivenessReleaseReplyLost(t *testing.T) {
	r := newRig(t)
	defer r.resume()
	p := r.probe(t, probeHooks{loseReply: isRelease})
	key := testKey(t)
	log := &eventLog{}
	m := newMutex(t, p.Client, key, opts(microlock.OnEvent(log.hook))...)
	if err := m.Lock(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	// Long enough for the hold to watch its own key, which then sees the
	// deletion before the release's answer does.
	time.Sleep(500 * time.Millisecond)
	p.arm()
	ctx := ctxTimeout(t, stallCtx)
	start := time.Now()
	err := m.Unlock(ctx)
	took := time.Since(start)
	t.Logf("Unlock returned %v after %v", err, took.Round(time.Millisecond))
	if !p.lost.Load() {
		t.Fatal("the release's reply was not lost: the test did not test anything")
	}
	if err != nil || took > bound {
		t.Fatalf("Unlock = %v after %v, its first reply lost; want nil within %v", err, took.Round(time.Millisecond), bound)
	}
	if m.Err() != nil || log.count(microlock.Released) != 1 || log.count(microlock.Lost) != 0 {
		t.Fatalf("after Unlock: Err() = %v, %d Released and %d Lost events, want nil, 1 and 0",
			m.Err(), log.count(microlock.Released), log.count(microlock.Lost))
	}
	if keys := keysUnder(t, r.direct, key); len(keys) != 0 {
		t.Fatalf("keys after Unlock: %q, want none", keys)
	}
}

// TestLivenessCatchUpPausedMember: waitDelete's read of what happened before
// its watches started, sent to a paused member, costs a retry. Before, the
// waiter stalled with it until its context ended, even after the holder had
// long released the lock.
func TestLivenessCatchUpPausedMember(t *testing.T) {
	r := newRig(t)
	defer r.resume()
	key := testKey(t)
	ctx := ctxTimeout(t, 20*time.Second)
	holder := newMutex(t, r.direct, key)
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	p := r.probe(t, probeHooks{
		pauseAt: isCatchUp,
		// A write between the waiter's enqueue and its watches: the
		// waiter must read what it may have missed.
		replied: func(req any) {
			if isEnqueue(req) {
				if _, err := r.direct.Put(ctx, testKey(t, "bump"), ""); err != nil {
					t.Errorf("moving the revision on: %v", err)
				}
			}
		},
	})
	p.arm()
	waiter := newMutex(t, p.Client, key, opts()...)
	wctx := ctxTimeout(t, stallCtx)
	errc := timed(func() error { return waiter.Lock(wctx) })
	at := p.widen(t, errc)
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	took, err := within(t, errc, at)
	t.Logf("waiter's Lock returned %v, %v after the pause (%v after the holder's release)",
		err, took.Round(time.Millisecond), time.Since(released).Round(time.Millisecond))
	if err != nil || took > bound {
		t.Fatalf("waiter's Lock = %v after %v with a member paused, want nil within %v", err, took.Round(time.Millisecond), bound)
	}
	assertHolds(t, r, key, waiter)
}

// TestLivenessRecheckPausedMember: waitTurn's read of the queue after its
// predecessor went, sent to a paused member, costs a retry. It already had
// its own timer; this keeps it so.
func TestLivenessRecheckPausedMember(t *testing.T) {
	r := newRig(t)
	defer r.resume()
	key := testKey(t)
	ctx := ctxTimeout(t, 20*time.Second)
	holder := newMutex(t, r.direct, key)
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	p := r.probe(t, probeHooks{pauseAt: isRecheck})
	waiter := newMutex(t, p.Client, key, opts()...)
	wctx := ctxTimeout(t, stallCtx)
	errc := timed(func() error { return waiter.Lock(wctx) })
	if keys := waitKeys(t, r.direct, key, 2, 5*time.Second); len(keys) != 2 {
		t.Fatalf("keys = %q, want the holder's and the waiter's", keys)
	}
	for _, all := p.createdElsewhere(); all < 2; _, all = p.createdElsewhere() {
		time.Sleep(10 * time.Millisecond) // the waiter watches the holder's key
	}
	p.arm()
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	took, err := within(t, errc, p.widen(t, errc))
	t.Logf("waiter's Lock returned %v, %v after the pause", err, took.Round(time.Millisecond))
	if err != nil || took > bound {
		t.Fatalf("waiter's Lock = %v after %v with a member paused, want nil within %v", err, took.Round(time.Millisecond), bound)
	}
	assertHolds(t, r, key, waiter)
}

// TestLivenessTryLockPausedMember: TryLock's request, sent to a paused
// member, ends in an attempt timeout, a transient error, instead of taking
// the caller's whole context; the caller's retry (here WithLock's, with
// NoWait) goes to another member and takes the lock.
func TestLivenessTryLockPausedMember(t *testing.T) {
	r := newRig(t)
	defer r.resume()
	key := testKey(t)
	p := r.probe(t, probeHooks{pauseAt: isTryLock})
	m := newMutex(t, p.Client, key, opts()...)
	// Take the lease and release it, so that the next TryLock's first
	// request is its Txn.
	ctx := ctxTimeout(t, 20*time.Second)
	if err := m.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	p.arm()
	tctx := ctxTimeout(t, stallCtx)
	errc := timed(func() error { return m.TryLock(tctx) })
	took, err := within(t, errc, p.widen(t, errc))
	t.Logf("TryLock returned %v, %v after the pause", err, took.Round(time.Millisecond))
	// The attempt timeout, and the deletion of a key that may have been
	// written, which may go to the paused member too: an attempt each.
	if bound := 3 * time.Second; took > bound || !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, microlock.ErrLocked) || tctx.Err() != nil {
		t.Fatalf("TryLock = %v after %v with a member paused, want an attempt timeout within %v", err, took.Round(time.Millisecond), bound)
	}

	start := time.Now()
	var keys []string
	// Its TryLocks may meet the paused member too: in a lease grant or the
	// deletion of a key that may have been written, each up to 2 s.
	err = microlock.WithLock(ctxTimeout(t, 10*time.Second), p.Client, key, func(context.Context) error {
		keys = keysUnder(t, r.direct, key)
		return nil
	}, opts(microlock.NoWait())...)
	took = time.Since(start)
	t.Logf("WithLock(NoWait) returned %v after %v, with %s still paused", err, took.Round(time.Millisecond), r.f.Name)
	if err != nil || len(keys) != 1 {
		t.Fatalf("WithLock(NoWait) after a timed-out TryLock = %v (keys while held: %q), want nil with one key", err, keys)
	}
	if keys := waitKeys(t, r.direct, key, 0, 5*time.Second); len(keys) != 0 {
		t.Fatalf("keys after WithLock: %q, want none", keys)
	}
}

// TestLivenessAbandonPausedMember: a TryLock whose Txn was applied but never
// answered gives up and deletes the key it may have written; that deletion,
// sent to a paused member, costs an attempt and a retry elsewhere. Before, it
// was one request of abandonTimeout (2 s) which then failed, and the key it
// was meant to delete blocked the lock, for this Mutex's own next attempt
// too, until the lease's revoke got through: WithLock(NoWait) right after was
// refused with "locked by <this node>".
func TestLivenessAbandonPausedMember(t *testing.T) {
	r := newRig(t)
	defer r.resume()
	key := testKey(t)
	p := r.probe(t, probeHooks{loseReply: isTryLock, pauseAt: isAbandon})
	m := newMutex(t, p.Client, key, opts()...)
	ctx := ctxTimeout(t, 20*time.Second)
	if err := m.TryLock(ctx); err != nil { // the lease, granted before the fault
		t.Fatal(err)
	}
	if err := m.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	p.arm()
	start := time.Now()
	errc := timed(func() error { return m.TryLock(ctxTimeout(t, stallCtx)) })
	p.widen(t, errc)
	took, err := within(t, errc, start)
	keys := keysUnder(t, r.direct, key)
	t.Logf("TryLock returned %v after %v; keys then: %q", err, took.Round(time.Millisecond), keys)
	if !p.lost.Load() {
		t.Fatal("the TryLock's reply was not lost: the test did not test anything")
	}
	// The lost reply's attempt timeout, and the deletion's first attempt on
	// the paused member: 2 × 333 ms; bound leaves room for three more rounds.
	if !errors.Is(err, context.DeadlineExceeded) || took > bound || len(keys) != 0 {
		t.Fatalf("TryLock = %v after %v, keys left %q; want an attempt timeout within %v and no key", err, took.Round(time.Millisecond), keys, bound)
	}
	err = microlock.WithLock(ctxTimeout(t, 10*time.Second), p.Client, key, func(context.Context) error { return nil },
		opts(microlock.NoWait())...)
	if err != nil {
		t.Fatalf("WithLock(NoWait) after TryLock gave up: %v, want nil", err)
	}
}

// TestLivenessWatchCreatePausedMember: a waiter whose watches are being
// created on a paused member gives up that attempt and watches through
// another member. Before, Watch waited for the "created" replies until the
// waiter's context ended, and the holder's release went unnoticed.
func TestLivenessWatchCreatePausedMember(t *testing.T) {
	r := newRig(t)
	defer r.resume()
	key := testKey(t)
	ctx := ctxTimeout(t, 20*time.Second)
	holder := newMutex(t, r.direct, key)
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	p := r.probe(t, probeHooks{pauseAtWatch: true})
	p.arm()
	waiter := newMutex(t, p.Client, key, opts()...)
	wctx := ctxTimeout(t, stallCtx)
	errc := timed(func() error { return waiter.Lock(wctx) })
	at := p.widen(t, errc)
	// The waiter's two watches, on another member, while this one is paused.
	for n, _ := p.createdElsewhere(); n < 2; n, _ = p.createdElsewhere() {
		if time.Since(at) > bound {
			t.Fatalf("the waiter's watches were not created on another member within %v", bound)
		}
		select {
		case err := <-errc:
			t.Fatalf("the waiter's Lock returned %v while the lock was held", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	watched := time.Since(at)
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	took, err := within(t, errc, released)
	t.Logf("watches created elsewhere %v after the pause; the waiter's Lock returned %v, %v after the holder's release",
		watched.Round(time.Millisecond), err, took.Round(time.Millisecond))
	if err != nil || took > bound {
		t.Fatalf("waiter's Lock = %v %v after the release, want nil within %v", err, took.Round(time.Millisecond), bound)
	}
	assertHolds(t, r, key, waiter)
}

// assertHolds checks that m holds key: its key is the only one, with m's
// token. It then resumes the paused member and releases the lock (a release
// with a member paused is TestLivenessReleasePausedMember's).
func assertHolds(t *testing.T, r *rig, key string, m *microlock.Mutex) {
	t.Helper()
	c := r.direct
	resp, err := c.Get(ctxTimeout(t, 5*time.Second), key+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || resp.Kvs[0].CreateRevision != m.Token() {
		var keys []string
		for _, kv := range resp.Kvs {
			keys = append(keys, fmt.Sprintf("%s@%d", kv.Key, kv.CreateRevision))
		}
		t.Fatalf("keys = %q, want one with the waiter's token %d", keys, m.Token())
	}
	r.resume()
	if err := m.Unlock(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("keys after Unlock: %q, want none", keys)
	}
}

// TestLivenessWatchPausedAfterCreate: a waiter whose watches were created on
// a member that pauses afterwards hears nothing from them; it reads the
// queue again every recheck interval (half the TTL, at least 1 s), and so
// takes the lock the holder released through another member.
func TestLivenessWatchPausedAfterCreate(t *testing.T) {
	r := newRig(t)
	defer r.resume()
	key := testKey(t)
	ctx := ctxTimeout(t, 20*time.Second)
	holder := newMutex(t, r.direct, key)
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	p := r.probe(t, probeHooks{})
	waiter := newMutex(t, p.Client, key, opts()...)
	wctx := ctxTimeout(t, 3*stallCtx)
	errc := timed(func() error { return waiter.Lock(wctx) })
	for _, all := p.createdElsewhere(); all < 2; _, all = p.createdElsewhere() {
		time.Sleep(10 * time.Millisecond) // both watches, on the member to pause
	}
	p.pause()
	p.widen(t, errc)
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	took, err := within(t, errc, released)
	t.Logf("the waiter's Lock returned %v, %v after the holder's release", err, took.Round(time.Millisecond))
	// One recheck interval, then at worst a few attempt timeouts.
	if bound := 4 * time.Second; err != nil || took > bound {
		t.Fatalf("waiter's Lock = %v %v after the release, want nil within %v", err, took.Round(time.Millisecond), bound)
	}
	assertHolds(t, r, key, waiter)
}
