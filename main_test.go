package microlock_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
	"github.com/microlock/microlock/internal/testkit"
)

// shared is a single-node etcd that most tests and every example use; each
// test locks keys named after itself. Tests that kill, pause or cut off etcd
// start their own.
var shared *etcdtest.Cluster

// exampleEndpoints are the endpoints the examples connect to.
func exampleEndpoints() []string { return shared.Endpoints() }

func TestMain(m *testing.M) {
	if os.Getenv(helperProcessEnv) != "" {
		os.Exit(helperProcess())
	}
	os.Exit(testkit.Main(m, func(c *etcdtest.Cluster) { shared = c }))
}

// client returns a client of the shared etcd, closed at the end of the test.
func client(t testing.TB) *clientv3.Client {
	t.Helper()
	return shared.Client(t)
}

// testKey returns a key unique to the test.
func testKey(t testing.TB, suffix ...string) string {
	return "test/" + t.Name() + "/" + strings.Join(suffix, "/")
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context { return testkit.Ctx(t, d) }

// newMutex is microlock.New that fails the test on error and closes the
// Mutex at the end of the test.
func newMutex(t testing.TB, c *clientv3.Client, key string, opts ...microlock.Option) *microlock.Mutex {
	t.Helper()
	return testkit.Mutex(t, c, key, opts...)
}

// keysUnder lists the keys under key's lock prefix.
func keysUnder(t testing.TB, c *clientv3.Client, key string) []string {
	t.Helper()
	resp, err := c.Get(ctxTimeout(t, 5*time.Second), key+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatalf("listing %q: %v", key, err)
	}
	var keys []string
	for _, kv := range resp.Kvs {
		keys = append(keys, string(kv.Key))
	}
	return keys
}

// eventLog records OnEvent events for a test.
type eventLog struct {
	mu     sync.Mutex
	events []microlock.Event
}

func (l *eventLog) hook(ev microlock.Event) {
	l.mu.Lock()
	l.events = append(l.events, ev)
	l.mu.Unlock()
}

func (l *eventLog) count(typ microlock.EventType) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, ev := range l.events {
		if ev.Type == typ {
			n++
		}
	}
	return n
}

func (l *eventLog) of(typ microlock.EventType) []microlock.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []microlock.Event
	for _, ev := range l.events {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

// rpcCounter counts the etcd requests a client makes, by gRPC method: unary
// calls, keepalives (requests sent on LeaseKeepAlive streams, however many
// streams carry them) and watch streams opened.
type rpcCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *rpcCounter) add(method string) {
	r.mu.Lock()
	r.n[method[strings.LastIndex(method, "/")+1:]]++
	r.mu.Unlock()
}

// snapshot returns the counts so far and resets them.
func (r *rpcCounter) snapshot() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.n
	r.n = make(map[string]int)
	return out
}

// countingClient returns a client of the shared etcd whose requests are
// counted. The counting interceptors sit inside the client's own retry
// interceptor, so every attempt sent is counted.
func countingClient(t testing.TB) (*clientv3.Client, *rpcCounter) {
	t.Helper()
	rc := &rpcCounter{n: make(map[string]int)}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   shared.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				rc.add(method)
				return invoker(ctx, method, req, reply, cc, opts...)
			}),
			grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
				if strings.HasSuffix(method, "/LeaseKeepAlive") {
					s, err := streamer(ctx, desc, cc, method, opts...)
					if err != nil {
						return nil, err
					}
					return &sendCounter{ClientStream: s, rc: rc, method: method}, nil
				}
				rc.add(method)
				return streamer(ctx, desc, cc, method, opts...)
			}),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, rc
}

// sendCounter counts the requests sent on a stream.
type sendCounter struct {
	grpc.ClientStream
	rc     *rpcCounter
	method string
}

func (s *sendCounter) SendMsg(m any) error {
	s.rc.add(s.method)
	return s.ClientStream.SendMsg(m)
}

// gauge counts holders inside a critical section and remembers the most it
// ever saw at once.
type gauge struct {
	cur, max atomic.Int32
}

func (g *gauge) enter() {
	n := g.cur.Add(1)
	for {
		m := g.max.Load()
		if n <= m || g.max.CompareAndSwap(m, n) {
			return
		}
	}
}

func (g *gauge) exit() { g.cur.Add(-1) }
