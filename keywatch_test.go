package microlock_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// The tests here are about the key watch: the watch each hold keeps on its
// own key, whose deletion is the only loss signal when etcd itself drops a
// renewed lease. Each makes the watch fail in one way, then deletes the key
// and expects the hold to end within about a second.

// watchTap sits between a client and its Watch streams: it records every
// response the client receives and which address each stream goes to, and
// breaks streams when a test says so. Everything else passes untouched.
type watchTap struct {
	// breakAfterCreated, if set before the client is made, breaks the first
	// stream right after it delivers its first successful "created" reply.
	breakAfterCreated bool
	// dropProgress, while set, keeps progress notifications from the
	// client: a watch then cannot move on without an event.
	dropProgress atomic.Bool

	mu      sync.Mutex
	streams []*tappedStream
	resps   []*pb.WatchResponse
	broken  int           // streams broken by breakAfterCreated
	changed chan struct{} // closed and replaced on every change
}

type tappedStream struct {
	grpc.ClientStream
	tap    *watchTap
	peer   string
	cancel context.CancelFunc

	mu     sync.Mutex
	failed bool // RecvMsg fails from now on
}

// client returns a client of endpoints whose Watch streams go through the
// tap, closed at the end of the test. cfg, if given, supplies the rest of
// the configuration (credentials, say).
func (w *watchTap) client(t testing.TB, cfg clientv3.Config, endpoints ...string) *clientv3.Client {
	t.Helper()
	w.mu.Lock()
	w.changed = make(chan struct{})
	w.mu.Unlock()
	cfg.Endpoints = endpoints
	cfg.DialTimeout = 5 * time.Second
	cfg.Logger = zap.NewNop()
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithChainStreamInterceptor(w.intercept))
	c, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func (w *watchTap) intercept(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if method != "/etcdserverpb.Watch/Watch" {
		return streamer(ctx, desc, cc, method, opts...)
	}
	ctx, cancel := context.WithCancel(ctx)
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &tappedStream{ClientStream: cs, tap: w, cancel: cancel}
	if p, ok := peer.FromContext(cs.Context()); ok {
		s.peer = p.Addr.String()
	}
	w.mu.Lock()
	w.streams = append(w.streams, s)
	w.notifyLocked()
	w.mu.Unlock()
	return s, nil
}

func (s *tappedStream) RecvMsg(m any) error {
	s.mu.Lock()
	failed := s.failed
	s.mu.Unlock()
	if failed {
		return status.Error(codes.Unavailable, "watchTap: stream broken by the test")
	}
	for {
		err := s.ClientStream.RecvMsg(m)
		resp, ok := m.(*pb.WatchResponse)
		if ok && err == nil && s.tap.dropProgress.Load() && isProgress(resp) {
			continue
		}
		if ok && err == nil {
			s.tap.record(s, resp)
		}
		return err
	}
}

// isProgress: a progress notification, which names no watch.
func isProgress(r *pb.WatchResponse) bool {
	return r.WatchId == clientv3.InvalidWatchID && !r.Created && !r.Canceled && len(r.Events) == 0
}

func (w *watchTap) record(s *tappedStream, resp *pb.WatchResponse) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.resps = append(w.resps, resp)
	if w.breakAfterCreated && w.broken == 0 && resp.Created && !resp.Canceled && resp.WatchId > 0 {
		// This reply reaches the client; nothing after it does.
		w.broken++
		s.mu.Lock()
		s.failed = true
		s.mu.Unlock()
	}
	w.notifyLocked()
}

func (w *watchTap) notifyLocked() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// mark returns the number of responses seen so far.
func (w *watchTap) mark() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.resps)
}

// resp returns the i-th response seen.
func (w *watchTap) resp(i int) *pb.WatchResponse {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.resps[i]
}

// waitFor waits up to 10 s for a response, from the from-th on, that
// matches ok, and returns its index.
func (w *watchTap) waitFor(t testing.TB, from int, what string, ok func(*pb.WatchResponse) bool) int {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		w.mu.Lock()
		for i := from; i < len(w.resps); i++ {
			if ok(w.resps[i]) {
				w.mu.Unlock()
				return i
			}
		}
		from = len(w.resps)
		changed := w.changed
		w.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no watch response %s within 10 s", what)
		}
	}
}

// breakAll breaks every Watch stream open now, the way a lost connection
// does: the client sees an error, the server a cancelled stream.
func (w *watchTap) breakAll() {
	w.mu.Lock()
	streams := w.streams
	w.mu.Unlock()
	for _, s := range streams {
		s.cancel()
	}
}

// lastPeer returns the address of the last stream opened.
func (w *watchTap) lastPeer() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.streams) == 0 {
		return ""
	}
	return w.streams[len(w.streams)-1].peer
}

func isCreated(r *pb.WatchResponse) bool { return r.Created && !r.Canceled && r.WatchId > 0 }

// expectKeyLoss waits up to within for m's hold to end because its key was
// deleted, and returns how long that took from start.
func expectKeyLoss(t *testing.T, m *microlock.Mutex, start time.Time, within time.Duration) time.Duration {
	t.Helper()
	select {
	case <-m.Done():
	case <-time.After(within - time.Since(start)):
		t.Fatalf("the deletion of the hold's key was not noticed within %v", within)
	}
	took := time.Since(start)
	err := m.Err()
	if !errors.Is(err, microlock.ErrLockLost) || !strings.Contains(err.Error(), "key was deleted") {
		t.Fatalf("Err = %v, want ErrLockLost because the key was deleted", err)
	}
	t.Logf("deletion noticed after %v", took.Round(time.Millisecond))
	return took
}

// TestKeyWatchCompactedResume: the stream breaks, and the revision the
// hold's watch resumes from has been compacted meanwhile. etcd cancels the
// resumed watch; the hold must watch its key again, and still notice its
// deletion.
func TestKeyWatchCompactedResume(t *testing.T) {
	tap := &watchTap{}
	c := tap.client(t, clientv3.Config{}, shared.Endpoints()...)
	direct := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)

	m := newMutex(t, c, key)
	if err := m.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	tap.waitFor(t, 0, "creating the hold's watch", isCreated)
	// A progress notification after the writes below would move the hold's
	// watch on to the compaction's revision, which a watch may still start
	// at: its resume would not be compacted, and the test would test
	// nothing. The watch stays where its key was created.
	tap.dropProgress.Store(true)

	// Other writes, then a compaction of everything up to the latest.
	var rev int64
	for i := range 5 {
		resp, err := direct.Put(ctx, key+"-other", strconv.Itoa(i))
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
	}
	if _, err := direct.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	mark := tap.mark()
	tap.breakAll()
	i := tap.waitFor(t, mark, "cancelling the resumed watch for compaction", func(r *pb.WatchResponse) bool { return r.CompactRevision != 0 })
	tap.dropProgress.Store(false)
	// The library's answer: a new create, accepted or refused.
	tap.waitFor(t, i+1, "re-creating the watch", func(r *pb.WatchResponse) bool { return r.Created })

	kv := readHolder(t, direct, key)
	start := time.Now()
	if err := deleteKey(ctx, direct, kv); err != nil {
		t.Fatal(err)
	}
	expectKeyLoss(t, m, start, time.Second)
}

// startJWTAuth starts a single-node etcd that signs its auth tokens (JWT,
// which carry the auth revision they were issued at, unlike etcd's simple
// tokens), with authentication on and the users of startAuth: root, and
// "writer", whose role "lockers" may read and write under authPrefix.
func startJWTAuth(t *testing.T) *etcdtest.Cluster {
	t.Helper()
	secret := filepath.Join(t.TempDir(), "jwt-secret")
	if err := os.WriteFile(secret, []byte(strings.Repeat("microlock-test-secret-", 4)), 0o600); err != nil {
		t.Fatal(err)
	}
	cl := etcdtest.Start(t, 1, etcdtest.WithArgs("--auth-token", "jwt,priv-key="+secret+",sign-method=HS256"))
	cli := cl.Client(t)
	ctx := ctxTimeout(t, 10*time.Second)
	steps := []func() error{
		func() error { _, err := cli.RoleAdd(ctx, "root"); return err },
		func() error { _, err := cli.UserAdd(ctx, "root", "root-pw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, "lockers"); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, "lockers", authPrefix, clientv3.GetPrefixRangeEnd(authPrefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, "writer", "writer-pw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "writer", "lockers"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("setting up authentication, step %d: %v", i+1, err)
		}
	}
	return cl
}

// TestKeyWatchRefusedCreate: etcd refuses to create a hold's watch because
// of a change to users or roles. A new hold on the lease of an older one
// gets its watch on the older one's stream, whose token dates from before
// the change. The refusal must be repaired, or end the hold: never ignored.
func TestKeyWatchRefusedCreate(t *testing.T) {
	for _, tc := range []refusedCreate{
		{
			// Any change makes the tokens issued before it stale: etcd
			// answers "auth revision is old" on the older stream.
			name: "stale token",
			change: func(ctx context.Context, root *clientv3.Client) error {
				_, err := root.RoleGrantPermission(ctx, "lockers", "unrelated/", "unrelated0", clientv3.PermissionType(clientv3.PermRead))
				return err
			},
		},
		{
			name: "permission revoked",
			change: func(ctx context.Context, root *clientv3.Client) error {
				_, err := root.RoleRevokePermission(ctx, "lockers", authPrefix, clientv3.GetPrefixRangeEnd(authPrefix))
				return err
			},
			lost: true,
		},
	} {
		t.Run(tc.name, tc.run)
	}
}

// refusedCreate is a case of TestKeyWatchRefusedCreate.
type refusedCreate struct {
	name string
	// change alters the auth store after the second hold was taken
	// and before its watch is created.
	change func(ctx context.Context, root *clientv3.Client) error
	// lost: the change ends the hold by itself (it can no longer be
	// watched); otherwise the watch is repaired and sees the deletion.
	lost bool
}

// run takes two holds on one lease, applies the change before the second
// hold's watch is created, and checks that the refusal is repaired or ends
// the hold.
func (tc refusedCreate) run(t *testing.T) {
	cl := startJWTAuth(t)
	root, err := clientv3.New(clientv3.Config{Endpoints: cl.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop(), Username: "root", Password: "root-pw"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = root.Close() })
	tap := &watchTap{}
	writer := tap.client(t, clientv3.Config{Username: "writer", Password: "writer-pw"}, cl.Endpoints()...)
	ctx := ctxTimeout(t, 30*time.Second)
	key1, key2 := authPrefix+t.Name()+"/1", authPrefix+t.Name()+"/2"

	first := newMutex(t, writer, key1)
	if err := first.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	tap.waitFor(t, 0, "creating the first hold's watch", isCreated)

	mark := tap.mark()
	second := newMutex(t, writer, key2) // same client and TTL: same lease, same stream
	if err := second.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	kv := readHolder(t, root, key2)
	if err := tc.change(ctx, root); err != nil { // within holdWatchDelay
		t.Fatal(err)
	}
	r := tap.waitFor(t, mark, "refusing the second hold's watch", func(r *pb.WatchResponse) bool { return r.Created && r.Canceled })
	t.Logf("etcd refused the watch: %q", tap.resp(r).CancelReason)

	if tc.lost {
		start := time.Now()
		select {
		case <-second.Done():
		case <-time.After(time.Second):
			t.Fatal("a hold whose key can no longer be watched is still held")
		}
		err := second.Err()
		if !errors.Is(err, microlock.ErrLockLost) || !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Fatalf("Err = %v, want ErrLockLost and permission denied", err)
		}
		t.Logf("hold ended after %v: %v", time.Since(start).Round(time.Millisecond), err)
		return
	}
	start := time.Now()
	if err := deleteKey(ctx, root, kv); err != nil {
		t.Fatal(err)
	}
	expectKeyLoss(t, second, start, time.Second)
	if err := first.Err(); err != nil || first.Token() == 0 {
		t.Fatalf("the first hold: err %v, token %d; want held", err, first.Token())
	}
}

// TestKeyWatchResumesFromDelivered: the key is deleted before its hold's
// watch starts, so that etcd owes the watch the deletion as a catch-up
// event, sent after the "created" reply. The stream breaks right after that
// reply. The reply's header revision is past the deletion, but the deletion
// was never delivered: the watch must resume from before it.
//
// The break is made in the client, between two messages of a real etcd's
// stream, because a network fault cannot pick that instant: etcd sends the
// catch-up within its 100 ms sync interval of the reply.
func TestKeyWatchResumesFromDelivered(t *testing.T) {
	tap := &watchTap{breakAfterCreated: true}
	c := tap.client(t, clientv3.Config{}, shared.Endpoints()...)
	direct := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)

	m := newMutex(t, c, key)
	if err := m.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	// Within holdWatchDelay (200 ms): the watch does not exist yet.
	kv := readHolder(t, direct, key)
	if err := deleteKey(ctx, direct, kv); err != nil {
		t.Fatal(err)
	}
	tap.waitFor(t, 0, "creating the hold's watch", isCreated)
	expectKeyLoss(t, m, time.Now(), 2*time.Second)
}

// TestKeyWatchNamespacedClient: on a client whose KV, Watcher and Lease are
// etcd's namespace wrappers, locks live inside the namespace, exclude each
// other, and notice the deletion of their key.
func TestKeyWatchNamespacedClient(t *testing.T) {
	ns := "ns/" + t.Name() + "/"
	c := shared.Client(t)
	c.KV = namespace.NewKV(c.KV, ns)
	c.Watcher = namespace.NewWatcher(c.Watcher, ns)
	c.Lease = namespace.NewLease(c.Lease, ns)
	raw := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)

	m1, m2 := newMutex(t, c, key), newMutex(t, c, key)
	if err := m1.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.TryLock(ctx); !errors.Is(err, microlock.ErrLocked) {
		t.Fatalf("second TryLock = %v, want ErrLocked", err)
	}
	if got := keysUnder(t, raw, key); len(got) != 0 {
		t.Fatalf("keys outside the namespace: %q", got)
	}
	keys := keysUnder(t, raw, ns+key)
	if len(keys) != 1 {
		t.Fatalf("keys in the namespace: %q, want one", keys)
	}
	time.Sleep(500 * time.Millisecond) // the hold's key watch is live

	start := time.Now()
	if _, err := raw.Delete(ctx, keys[0]); err != nil {
		t.Fatal(err)
	}
	expectKeyLoss(t, m1, start, time.Second)

	// The lock is free for the other Mutex, which excludes the first.
	if err := m2.TryLock(ctx); err != nil {
		t.Fatalf("TryLock after the holder's key was deleted: %v", err)
	}
	if err := m1.TryLock(ctx); !errors.Is(err, microlock.ErrLocked) {
		t.Fatalf("TryLock of the former holder = %v, want ErrLocked", err)
	}
	// Lock queues behind the holder, watching its key in the namespace.
	errc := make(chan error, 1)
	go func() { errc <- m1.Lock(ctx) }()
	select {
	case err := <-errc:
		t.Fatalf("Lock while another Mutex holds the lock = %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := m2.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Lock after the holder's Unlock: %v", err)
	}
	if err := m1.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestKeyWatchStreamOnDeadMember: the member that serves the key watch's
// stream stops answering (cut off by the network, or paused) while the
// other two serve. The deletion of the key must reach the holder through a
// healthy member within about a second; the lease stays renewed through the
// others, so nothing else would end the hold.
func TestKeyWatchStreamOnDeadMember(t *testing.T) {
	for _, tc := range []struct {
		name string
		kill func(*etcdtest.Proxy, *etcdtest.Member) error
	}{
		{"blackhole", func(p *etcdtest.Proxy, _ *etcdtest.Member) error { p.Blackhole(); return nil }},
		{"pause", func(_ *etcdtest.Proxy, m *etcdtest.Member) error { return m.Pause() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := etcdtest.Start(t, 3)
			var proxies []*etcdtest.Proxy
			var urls []string
			for _, ep := range cl.Endpoints() {
				p := etcdtest.NewProxy(t, ep)
				proxies = append(proxies, p)
				urls = append(urls, p.URL())
			}
			tap := &watchTap{}
			c := tap.client(t, clientv3.Config{}, urls...)
			ctx := ctxTimeout(t, 60*time.Second)
			key := testKey(t)

			m := newMutex(t, c, key, microlock.WithTTL(2*time.Second))
			if err := m.TryLock(ctx); err != nil {
				t.Fatal(err)
			}
			leader, err := cl.Leader(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// The stream must not be on the leader: pausing the leader
			// would stall the deletion too.
			var avoid *etcdtest.Member
			if tc.name == "pause" {
				avoid = leader
			}
			victim := streamMember(t, tap, proxies, cl, avoid)
			// Deleting through the victim's peers must work while it is
			// dead: it is not the leader, or is only cut off from us.
			var others []string
			for i, ep := range cl.Endpoints() {
				if i != victim {
					others = append(others, ep)
				}
			}
			direct := cl.Client(t, others...)
			kv := readHolder(t, direct, key)

			if err := tc.kill(proxies[victim], cl.Members[victim]); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := deleteKey(ctx, direct, kv); err != nil {
				t.Fatal(err)
			}
			expectKeyLoss(t, m, start, 1500*time.Millisecond)
		})
	}
}

// streamMember waits for the hold's watch to be created and returns the
// index of the member (and proxy) whose stream carries it; while that is
// avoid, it breaks the streams for the watch to go elsewhere.
func streamMember(t *testing.T, tap *watchTap, proxies []*etcdtest.Proxy, cl *etcdtest.Cluster, avoid *etcdtest.Member) int {
	t.Helper()
	for attempt := 0; ; attempt++ {
		mark := tap.mark()
		if attempt > 0 {
			tap.breakAll()
		}
		tap.waitFor(t, mark, "creating the hold's watch", isCreated)
		victim := -1
		for i, p := range proxies {
			if p.Addr() == tap.lastPeer() {
				victim = i
			}
		}
		if victim < 0 {
			t.Fatalf("the stream's peer %s is none of the proxies", tap.lastPeer())
		}
		if cl.Members[victim] != avoid {
			return victim
		}
		if attempt == 20 {
			t.Fatal("the stream keeps landing on the leader")
		}
	}
}
