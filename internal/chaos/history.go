package chaos

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Event is one change of a key in etcd's revision history.
type Event struct {
	Rev       int64  `json:"rev"` // the revision of the change
	Key       string `json:"key"`
	Delete    bool   `json:"delete,omitempty"`
	CreateRev int64  `json:"createRev,omitempty"` // for a put: the key's create revision
	Value     string `json:"value,omitempty"`
}

// ReadHistory returns every change under prefix since the cluster began, in
// revision order. etcd keeps every revision until it is compacted, and the
// suite's clusters never compact, so this is the ground truth of what
// landed: the order of the writes, and who held the lock at each of them.
//
// It first writes a marker key under prefix and reads until the marker's
// own event, so it knows the history is complete.
func ReadHistory(ctx context.Context, cli *clientv3.Client, prefix string) ([]Event, error) {
	marker := prefix + "\x00history-end"
	put, err := cli.Put(ctx, marker, "")
	if err != nil {
		return nil, fmt.Errorf("writing the end marker: %v", err)
	}
	end := put.Header.Revision

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out []Event
	for wr := range cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(1)) {
		if err := wr.Err(); err != nil {
			return nil, fmt.Errorf("reading the history: %v", err)
		}
		for _, ev := range wr.Events {
			kv := ev.Kv
			if string(kv.Key) == marker {
				if kv.ModRevision == end {
					return out, nil
				}
				continue
			}
			out = append(out, Event{
				Rev:       kv.ModRevision,
				Key:       string(kv.Key),
				Delete:    ev.Type == mvccpb.DELETE,
				CreateRev: kv.CreateRevision,
				Value:     string(kv.Value),
			})
		}
	}
	return nil, fmt.Errorf("reading the history: watch ended before revision %d: %v", end, ctx.Err())
}
