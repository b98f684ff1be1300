package main

import (
	"context"
	"fmt"
	"strings"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"

	"github.com/microlock/microlock/internal/chaos"
)

// opLog notes, through gRPC interceptors on the worker's etcd client, the
// requests that decide how a lock key can go away (see chaos.Op). It sits
// inside the etcd client's own retry interceptor, so it sees every attempt
// that goes out, with the time it went out: what bounds a lease's expiry
// is when the renewal was sent, which microlock's Renewed event cannot
// tell.
type opLog struct {
	prefix string            // the lock's key plus "/"
	names  map[string]string // endpoint address → member name

	mu  sync.Mutex
	ops []chaos.Op
}

func (l *opLog) add(op chaos.Op) {
	l.mu.Lock()
	l.ops = append(l.ops, op)
	l.mu.Unlock()
}

// drain returns the ops noted since the last drain.
func (l *opLog) drain() []chaos.Op {
	l.mu.Lock()
	defer l.mu.Unlock()
	ops := l.ops
	l.ops = nil
	return ops
}

func leaseHex(id int64) string { return fmt.Sprintf("%016x", id) }

// answered fills in op from an answer's header and the member that sent it.
func (l *opLog) answered(op *chaos.Op, h *pb.ResponseHeader, p *peer.Peer) {
	op.Acked = chaos.Now()
	if h != nil {
		op.Rev, op.Term = h.Revision, h.RaftTerm
	}
	if p != nil && p.Addr != nil {
		op.Via = l.names[p.Addr.String()]
	}
}

// unary notes lease grants and revocations and the writes and deletions of
// lock keys.
func (l *opLog) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	switch method {
	case pb.Lease_LeaseGrant_FullMethodName, pb.Lease_LeaseRevoke_FullMethodName,
		pb.KV_Txn_FullMethodName, pb.KV_Put_FullMethodName, pb.KV_DeleteRange_FullMethodName:
	default:
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	p := &peer.Peer{}
	sent := chaos.Now()
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(p))...)
	ops, hdr := l.unaryOps(method, req, reply, err)
	for i := range ops {
		ops[i].Sent = sent
		if err != nil {
			ops[i].Err = err.Error()
		} else {
			l.answered(&ops[i], hdr, p)
		}
		l.add(ops[i])
	}
	return err
}

// unaryOps returns the ops that a call of method with req made, and the
// header of its reply, which err says whether it came.
func (l *opLog) unaryOps(method string, req, reply any, err error) (ops []chaos.Op, hdr *pb.ResponseHeader) {
	switch method {
	case pb.Lease_LeaseGrant_FullMethodName:
		// Only an answer names the lease.
		if resp, ok := reply.(*pb.LeaseGrantResponse); ok && err == nil {
			ops, hdr = []chaos.Op{{Op: chaos.OpGrant, Lease: leaseHex(resp.ID), TTL: resp.TTL}}, resp.Header
		}
	case pb.Lease_LeaseRevoke_FullMethodName:
		if r, ok := req.(*pb.LeaseRevokeRequest); ok {
			ops = []chaos.Op{{Op: chaos.OpRevoke, Lease: leaseHex(r.ID)}}
		}
		if resp, ok := reply.(*pb.LeaseRevokeResponse); ok {
			hdr = resp.Header
		}
	case pb.KV_Put_FullMethodName:
		if r, ok := req.(*pb.PutRequest); ok {
			ops = l.put(r)
		}
		if resp, ok := reply.(*pb.PutResponse); ok {
			hdr = resp.Header
		}
	case pb.KV_DeleteRange_FullMethodName:
		if r, ok := req.(*pb.DeleteRangeRequest); ok {
			ops = l.del(r)
		}
		if resp, ok := reply.(*pb.DeleteRangeResponse); ok {
			hdr = resp.Header
		}
	case pb.KV_Txn_FullMethodName:
		r, _ := req.(*pb.TxnRequest)
		resp, _ := reply.(*pb.TxnResponse)
		if r == nil {
			break
		}
		if err == nil && resp != nil {
			// Only the branch that ran took effect.
			branch := r.Failure
			if resp.Succeeded {
				branch = r.Success
			}
			ops, hdr = l.txn(branch), resp.Header
		} else {
			ops = append(l.txn(r.Success), l.txn(r.Failure)...)
		}
	}
	return ops, hdr
}

func (l *opLog) put(r *pb.PutRequest) []chaos.Op {
	if !strings.HasPrefix(string(r.Key), l.prefix) {
		return nil
	}
	return []chaos.Op{{Op: chaos.OpPut, Key: string(r.Key), Lease: leaseHex(r.Lease)}}
}

func (l *opLog) del(r *pb.DeleteRangeRequest) []chaos.Op {
	key, end := string(r.Key), string(r.RangeEnd)
	// A range that starts before the prefix can still cover lock keys.
	if !strings.HasPrefix(key, l.prefix) && (end == "" || (end != "\x00" && end <= l.prefix)) {
		return nil
	}
	return []chaos.Op{{Op: chaos.OpDelete, Key: key, End: end}}
}

func (l *opLog) txn(ops []*pb.RequestOp) []chaos.Op {
	var out []chaos.Op
	for _, op := range ops {
		switch {
		case op.GetRequestPut() != nil:
			out = append(out, l.put(op.GetRequestPut())...)
		case op.GetRequestDeleteRange() != nil:
			out = append(out, l.del(op.GetRequestDeleteRange())...)
		case op.GetRequestTxn() != nil:
			// Nested: without its answer, both branches may have run.
			t := op.GetRequestTxn()
			out = append(append(out, l.txn(t.Success)...), l.txn(t.Failure)...)
		}
	}
	return out
}

// stream notes lease renewals: the etcd client's KeepAliveOnce opens a
// LeaseKeepAlive stream, sends one request and reads one answer.
func (l *opLog) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil || method != pb.Lease_LeaseKeepAlive_FullMethodName {
		return cs, err
	}
	return &keepAliveStream{ClientStream: cs, log: l, sent: make(map[int64]int64)}, nil
}

type keepAliveStream struct {
	grpc.ClientStream
	log  *opLog
	mu   sync.Mutex
	sent map[int64]int64 // lease ID → when its request went out, until answered
}

func (s *keepAliveStream) SendMsg(m any) error {
	t := chaos.Now()
	err := s.ClientStream.SendMsg(m)
	if req, ok := m.(*pb.LeaseKeepAliveRequest); ok {
		if err != nil {
			s.log.add(chaos.Op{Op: chaos.OpKeepAlive, Lease: leaseHex(req.ID), Sent: t, Err: err.Error()})
		} else {
			s.mu.Lock()
			s.sent[req.ID] = t
			s.mu.Unlock()
		}
	}
	return err
}

func (s *keepAliveStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	s.mu.Lock()
	defer s.mu.Unlock()
	if resp, ok := m.(*pb.LeaseKeepAliveResponse); ok && err == nil {
		op := chaos.Op{Op: chaos.OpKeepAlive, Lease: leaseHex(resp.ID), Sent: s.sent[resp.ID], TTL: resp.TTL}
		delete(s.sent, resp.ID)
		// The stream's context carries the peer once a message has come.
		p, _ := peer.FromContext(s.ClientStream.Context())
		s.log.answered(&op, resp.Header, p)
		s.log.add(op)
		return nil
	}
	if err != nil {
		// No answer will come to what is still pending.
		for id, t := range s.sent {
			s.log.add(chaos.Op{Op: chaos.OpKeepAlive, Lease: leaseHex(id), Sent: t, Err: err.Error()})
		}
		clear(s.sent)
	}
	return err
}
