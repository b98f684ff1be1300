package microlock

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Holder reads, once, who holds key: a Locked event with the holder's value
// and fencing token, or Unlocked when the key is free. For a semaphore or a
// shared lock, Holders says how many hold it and HeldBy lists them. It sees every holder
// that uses the same layout: microlock's Mutex and Lead, etcd's
// concurrency.Mutex and Election, etcdctl lock and etcdctl elect.
//
// The answer is a snapshot at one etcd revision: the holder may change as
// soon as it is read. To act on it safely, hold the lock; to follow it, use
// Watch. An error means etcd could not be read.
func Holder(ctx context.Context, client *clientv3.Client, key string) (Event, error) {
	switch {
	case ctx == nil:
		return Event{}, errNilContext
	case client == nil:
		return Event{}, errors.New("microlock: nil etcd client")
	case key == "":
		return Event{}, errors.New("microlock: empty key")
	}
	if err := ctx.Err(); err != nil {
		return Event{}, fmt.Errorf("microlock: reading the holder of %s: %w", quoteKey(key), err)
	}
	w := &watcher{client: client, key: key, pfx: key + "/"}
	if _, err := w.read(ctx); err != nil {
		return Event{}, fmt.Errorf("microlock: reading the holder of %s: %w", quoteKey(key), err)
	}
	return w.state(), nil
}
