package bench

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// newClient returns a client of endpoints. With a counter, every request
// the client sends is counted: unary calls, streams opened, and messages
// sent on streams (etcd's KeepAlive sends every renewal of every lease as a
// message on one long-lived stream). The interceptors sit inside the client's
// own retry interceptor, so every attempt is counted.
func newClient(endpoints []string, rc *rpcCounter) (*clientv3.Client, error) {
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	}
	if rc != nil {
		cfg.DialOptions = []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(rc.unary),
			grpc.WithChainStreamInterceptor(rc.stream),
		}
	}
	return clientv3.New(cfg)
}

// benchClient returns a client of the run's etcd, closed when the benchmark
// function returns.
func benchClient(b *testing.B) *clientv3.Client {
	b.Helper()
	return etcdOf(b).Client(b)
}

// rpcCounter counts a client's requests by kind and gRPC method name.
type rpcCounter struct {
	mu sync.Mutex
	n  map[rpcKind]map[string]int
}

type rpcKind int

const (
	unaryCall  rpcKind = iota // one request, one response
	streamOpen                // a stream opened (Watch, LeaseKeepAlive)
	streamSend                // a message sent on a stream
)

func newRPCCounter() *rpcCounter {
	return &rpcCounter{n: make(map[rpcKind]map[string]int)}
}

func (r *rpcCounter) add(kind rpcKind, method string) {
	method = method[strings.LastIndex(method, "/")+1:]
	r.mu.Lock()
	if r.n[kind] == nil {
		r.n[kind] = make(map[string]int)
	}
	r.n[kind][method]++
	r.mu.Unlock()
}

// take returns the counts so far and starts again from zero.
func (r *rpcCounter) take() map[rpcKind]map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.n
	r.n = make(map[rpcKind]map[string]int)
	return out
}

func (r *rpcCounter) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	r.add(unaryCall, method)
	return invoker(ctx, method, req, reply, cc, opts...)
}

func (r *rpcCounter) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	r.add(streamOpen, method)
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &countedStream{ClientStream: cs, r: r, method: method}, nil
}

// countedStream counts the messages sent on one stream.
type countedStream struct {
	grpc.ClientStream
	r      *rpcCounter
	method string
}

func (s *countedStream) SendMsg(m any) error {
	s.r.add(streamSend, s.method)
	return s.ClientStream.SendMsg(m)
}
