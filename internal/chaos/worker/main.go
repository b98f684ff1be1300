// Command worker is one process of microlock's fault-injection suite. It
// loops WithLock (or, in the leader variant, runs Lead) on one key and, while it holds the lock, increments a
// counter in etcd with a deliberately non-atomic read-modify-write. It
// writes one JSON line per WithLock call (see chaos.Record) and stops when
// its standard input closes, which is how the suite stops it, and also what
// happens when the suite dies.
//
// The suite builds it with go build and runs several at once, each with its
// own etcd client whose endpoints are the worker's own fault proxies.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/chaos"
)

// writeTimeout bounds a write that no one answers: the worker goes on with
// its next call, and the write's fate is read from etcd's history.
const writeTimeout = 5 * time.Second

func main() { os.Exit(run()) }

func run() int {
	w, out, members, endpoints, ok := parseFlags()
	if !ok {
		fmt.Fprintln(os.Stderr, "microlock: chaos worker: need -node, -endpoints, -out, a valid -variant and -min-wait <= -max-wait")
		return 2
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()

	eps := strings.Split(endpoints, ",")
	w.names = make(map[string]string) // endpoint address → member name
	for i, name := range strings.Split(members, ",") {
		if i < len(eps) {
			w.names[strings.TrimPrefix(eps[i], "http://")] = name
		}
	}
	ops := &opLog{prefix: w.key + "/", names: w.names}
	var err error
	w.cli, err = clientv3.New(clientv3.Config{
		Endpoints:   eps,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{
			grpc.WithChainUnaryInterceptor(notePeer, ops.unary),
			grpc.WithChainStreamInterceptor(ops.stream),
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "microlock: chaos worker:", err)
		return 1
	}
	defer w.cli.Close()
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "microlock: chaos worker:", err)
		return 1
	}
	defer f.Close()
	if err := w.loop(ctx, ops, f); err != nil {
		fmt.Fprintln(os.Stderr, "microlock: chaos worker:", err)
		return 1
	}
	return 0
}

// parseFlags reads the command line into a worker, without its client, and
// the records file, member names and endpoints. It reports false for a
// command line the worker cannot run with.
func parseFlags() (w *worker, out, members, endpoints string, ok bool) {
	var (
		node    = flag.String("node", "", "node ID, stored in the lock and in the counter")
		eps     = flag.String("endpoints", "", "comma-separated etcd endpoints (the worker's proxies)")
		names   = flag.String("members", "", "comma-separated names of the members behind the endpoints, in the same order")
		key     = flag.String("key", "chaos/register", "lock key")
		counter = flag.String("counter", "chaos/counter", "counter key")
		variant = flag.String("variant", string(chaos.Plain), "plain (unguarded Put), fenced (Txn guarded by IsOwner), semaphore or shared (see chaos.Semaphore), or leader (Lead, fenced writes)")
		ttl     = flag.Duration("ttl", 2*time.Second, "lock TTL")
		records = flag.String("out", "", "file to append records to")
		seed    = flag.Uint64("seed", 1, "seed for the pause inside the read-modify-write")
		minWait = flag.Duration("min-wait", 5*time.Millisecond, "shortest pause between the read and the write")
		maxWait = flag.Duration("max-wait", 15*time.Millisecond, "longest pause between the read and the write")
	)
	flag.Parse()
	v := chaos.Variant(*variant)
	if *node == "" || *eps == "" || *records == "" || (v != chaos.Plain && v != chaos.Fenced && v != chaos.Leader && !v.Admission()) || *maxWait < *minWait {
		return nil, "", "", "", false
	}
	w = &worker{
		node:    *node,
		key:     *key,
		counter: *counter,
		variant: v,
		ttl:     *ttl,
		rng:     rand.New(rand.NewPCG(*seed, 0)),
		minWait: *minWait,
		maxWait: *maxWait,
	}
	return w, *records, *names, *eps, true
}

// loop calls WithLock again and again until ctx ends, and appends a record
// of each call, with the requests it made, to f.
func (w *worker) loop(ctx context.Context, ops *opLog, f *os.File) error {
	write := func(rec chaos.Record) error {
		rec.Ops = ops.drain()
		line, _ := json.Marshal(rec) // a Record always encodes
		// One write per line: a worker killed mid-way leaves whole lines.
		_, err := f.Write(append(line, '\n'))
		return err
	}
	if w.variant == chaos.Leader {
		return w.runLeader(ctx, write)
	}
	for seq := int64(1); ctx.Err() == nil; seq++ {
		rec := w.call(ctx, seq)
		if err := write(rec); err != nil {
			return err
		}
		if rec.Acq == 0 && ctx.Err() == nil {
			// No hold: an error that WithLock does not retry. Do not spin.
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// runLeader is the leader variant's run: one Lead, a record per term.
func (w *worker) runLeader(ctx context.Context, write func(chaos.Record) error) error {
	var werr error
	err := w.lead(ctx, func(rec chaos.Record) {
		if err := write(rec); err != nil && werr == nil {
			werr = err
		}
	})
	return errors.Join(err, werr)
}

type worker struct {
	cli              *clientv3.Client
	names            map[string]string
	node, key        string
	counter          string
	variant          chaos.Variant
	ttl              time.Duration
	rng              *rand.Rand
	minWait, maxWait time.Duration
}

// call runs one WithLock and records it.
func (w *worker) call(ctx context.Context, seq int64) chaos.Record {
	rec := chaos.Record{Node: w.node, Seq: seq, Call: chaos.Now()}
	// The Lost and Renewed events can come from the lease's goroutine.
	var acq, token, lostEvent, lostCtx atomic.Int64
	var lostByWrite int64 // set by fn, read after WithLock returns
	var renewMu sync.Mutex
	var renewed []int64
	hook := func(ev microlock.Event) {
		switch ev.Type {
		case microlock.Acquired:
			acq.Store(chaos.Now())
			token.Store(ev.Token)
		case microlock.Renewed:
			t := chaos.Now()
			renewMu.Lock()
			renewed = append(renewed, t)
			renewMu.Unlock()
		case microlock.Lost:
			lostEvent.CompareAndSwap(0, chaos.Now())
		}
	}
	opts := []microlock.Option{microlock.WithTTL(w.ttl), microlock.WithNodeID(w.node), microlock.OnEvent(hook)}
	if w.variant.Admission() {
		rec.Rule = chaos.RuleOf(w.variant, seq)
		opts = append(opts, admissionOptions(rec.Rule)...)
	}
	err := microlock.WithLock(ctx, w.cli, w.key, func(fctx context.Context) error {
		// The loss signal is fn's context being cancelled with ErrLockLost;
		// note the moment it happens, whatever fn is doing.
		noted := make(chan struct{})
		stop := context.AfterFunc(fctx, func() {
			defer close(noted)
			t := chaos.Now()
			if errors.Is(context.Cause(fctx), microlock.ErrLockLost) {
				lostCtx.Store(t)
			}
		})
		defer func() {
			if !stop() {
				<-noted
			}
		}()
		if w.variant.Admission() {
			return w.mark(fctx, &rec)
		}
		return w.increment(fctx, &rec, &lostByWrite)
	}, opts...)
	rec.End = chaos.Now()
	rec.Acq, rec.Token = acq.Load(), token.Load()
	rec.Lost = lostCtx.Load()
	renewMu.Lock()
	rec.Renewed = renewed
	renewMu.Unlock()
	// The loss signal's time is the earliest sighting of it.
	for _, t := range []int64{lostEvent.Load(), lostByWrite} {
		if t != 0 && (rec.Lost == 0 || t < rec.Lost) {
			rec.Lost = t
		}
	}
	if err != nil {
		rec.Err = err.Error()
	}
	return rec
}

// increment reads the counter, pauses a few milliseconds, and writes the
// value read plus one. Each variant tests one defence on its own:
//
//   - plain relies on the loss signal alone: its read and its unguarded Put
//     both use fn's context, so a worker told it lost the lock stops, and a
//     write still in flight is cancelled.
//   - fenced relies on the fence alone: its Txn, guarded by IsOwner, is sent
//     with a context of its own, so a late write does reach etcd, and etcd
//     must refuse it.
func (w *worker) increment(ctx context.Context, rec *chaos.Record, lostSeen *int64) error {
	rec.FnStart = chaos.Now()
	defer func() { rec.FnEnd = chaos.Now() }()
	m, ok := microlock.FromContext(ctx)
	if !ok {
		return errors.New("microlock: chaos worker: no Mutex in fn's context")
	}
	// Both taken while the lock is surely held. After a loss, IsOwner would
	// give a comparison that fails before it reaches etcd; the guard taken
	// now makes etcd itself refuse a late write.
	guard, token := m.IsOwner(), m.Token()

	resp, err := w.cli.Get(ctx, w.counter)
	rec.ReadEnd = chaos.Now()
	if err != nil {
		return err
	}
	var cur chaos.Value
	if len(resp.Kvs) > 0 {
		if cur, err = chaos.ParseValue(resp.Kvs[0].Value); err != nil {
			return err
		}
	}
	rec.ReadOK, rec.Read, rec.ReadRev = true, cur.N, resp.Header.Revision

	// Work between the read and the write, which does not look at ctx: the
	// gap that makes the increment need a lock.
	time.Sleep(w.minWait + time.Duration(w.rng.Int64N(int64(w.maxWait-w.minWait)+1)))

	next := chaos.Value{N: cur.N + 1, Node: w.node, Seq: rec.Seq, Token: token}
	val, _ := json.Marshal(next) // a Value always encodes
	rec.Written = next.N
	rev, acked, err := w.write(ctx, rec, guard, string(val))
	if errors.Is(err, context.Canceled) && errors.Is(context.Cause(ctx), microlock.ErrLockLost) {
		// The write ended because the loss signal cancelled its context:
		// the signal came before WriteEnd. The AfterFunc and the Lost hook
		// that note it run on goroutines of their own and may note it
		// after this, so WriteEnd is the earliest sighting.
		*lostSeen = rec.WriteEnd
	}
	switch {
	case err != nil:
		rec.Write, rec.WriteErr = chaos.WriteUnknown, err.Error()
	case !acked:
		rec.Write = chaos.WriteRefused
	default:
		rec.Write, rec.WriteRev = chaos.WriteOK, rev
	}
	return nil
}

// write writes val to the counter, unguarded (plain) or guarded by guard
// (fenced), and notes in rec when the write was sent and answered and which
// member it went to. acked is false if the guard refused it.
func (w *worker) write(ctx context.Context, rec *chaos.Record, guard clientv3.Cmp, val string) (rev int64, acked bool, err error) {
	wctx := ctx
	if w.variant == chaos.Fenced || w.variant == chaos.Leader {
		wctx = context.WithoutCancel(ctx)
	}
	wctx, cancel := context.WithTimeout(wctx, writeTimeout)
	defer cancel()
	via := &peer.Peer{}
	wctx = context.WithValue(wctx, peerKey{}, via)
	rec.WriteStart = chaos.Now()
	acked = true
	switch w.variant {
	case chaos.Plain:
		var r *clientv3.PutResponse
		if r, err = w.cli.Put(wctx, w.counter, val); err == nil {
			rev = r.Header.Revision
		}
	case chaos.Fenced, chaos.Leader:
		var r *clientv3.TxnResponse
		r, err = w.cli.Txn(wctx).If(guard).Then(clientv3.OpPut(w.counter, val)).Commit()
		if err == nil {
			rev, acked = r.Header.Revision, r.Succeeded
		}
	}
	rec.WriteEnd = chaos.Now()
	if via.Addr != nil {
		rec.WriteVia = w.names[via.Addr.String()]
	}
	return rev, acked, err
}

type peerKey struct{}

// notePeer fills in the *peer.Peer that a request's context carries with
// the endpoint that served the request (its last attempt), so that a record
// can say which member a write went through.
func notePeer(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if p, ok := ctx.Value(peerKey{}).(*peer.Peer); ok {
		opts = append(opts, grpc.Peer(p))
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}
