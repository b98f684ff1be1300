package main

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/peer"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/chaos"
)

// admissionOptions are the options of a hold of rule (chaos.RulePermit,
// RuleShared, RuleExclusive: none).
func admissionOptions(rule string) []microlock.Option {
	switch rule {
	case chaos.RulePermit:
		return []microlock.Option{microlock.WithLimit(chaos.SemaphoreLimit)}
	case chaos.RuleShared:
		return []microlock.Option{microlock.Shared()}
	}
	return nil
}

// mark is the work of a hold in the admission variants: a pause, then one
// write of the counter naming the hold, in a Txn guarded by IsOwner and
// sent with a context of its own (as the fenced variant's), so that etcd,
// not the worker, must refuse a write that comes too late.
func (w *worker) mark(ctx context.Context, rec *chaos.Record) error {
	rec.FnStart = chaos.Now()
	defer func() { rec.FnEnd = chaos.Now() }()
	m, ok := microlock.FromContext(ctx)
	if !ok {
		return errors.New("microlock: chaos worker: no Mutex in fn's context")
	}
	guard, token := m.IsOwner(), m.Token()
	time.Sleep(w.minWait + time.Duration(w.rng.Int64N(int64(w.maxWait-w.minWait)+1)))

	val, _ := json.Marshal(chaos.Value{N: rec.Seq, Node: w.node, Seq: rec.Seq, Token: token}) // a Value always encodes
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), writeTimeout)
	defer cancel()
	via := &peer.Peer{}
	wctx = context.WithValue(wctx, peerKey{}, via)
	rec.WriteStart = chaos.Now()
	r, err := w.cli.Txn(wctx).If(guard).Then(clientv3.OpPut(w.counter, string(val))).Commit()
	rec.WriteEnd = chaos.Now()
	if via.Addr != nil {
		rec.WriteVia = w.names[via.Addr.String()]
	}
	switch {
	case err != nil:
		rec.Write, rec.WriteErr = chaos.WriteUnknown, err.Error()
	case !r.Succeeded:
		rec.Write = chaos.WriteRefused
	default:
		rec.Write, rec.WriteRev = chaos.WriteOK, r.Header.Revision
	}
	return nil
}
