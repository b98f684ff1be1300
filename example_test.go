package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

func newExampleClient() *clientv3.Client {
	client, err := clientv3.New(clientv3.Config{Endpoints: exampleEndpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	return client
}

// Run a job on exactly one node at a time.
func ExampleWithLock() {
	client := newExampleClient()
	defer client.Close()

	err := microlock.WithLock(context.Background(), client, "examples/nightly-report", func(ctx context.Context) error {
		// ctx is cancelled if the lock is lost: stop the work when it is.
		m, _ := microlock.FromContext(ctx)
		fmt.Println("building the report, fencing token issued:", m.Token() > 0)
		return nil
	}, microlock.WithNodeID("report-builder-1"))
	fmt.Println("done:", err)
	// Output:
	// building the report, fencing token issued: true
	// done: <nil>
}

// Microlock's lock(): one attempt, and who holds the lock if it is taken.
func ExampleMutex_TryLock() {
	client := newExampleClient()
	defer client.Close()
	ctx := context.Background()

	a, _ := microlock.New(client, "examples/migration", microlock.WithNodeID("node-a"))
	defer a.Close()
	b, _ := microlock.New(client, "examples/migration", microlock.WithNodeID("node-b"))
	defer b.Close()

	if err := a.TryLock(ctx); err != nil {
		log.Fatal(err)
	}
	var locked *microlock.AlreadyLockedError
	if err := b.TryLock(ctx); errors.As(err, &locked) {
		fmt.Printf("%s is locked by %s\n", locked.Key, locked.Holder)
	}
	if err := a.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("node-b after node-a unlocked:", b.TryLock(ctx))
	// Output:
	// examples/migration is locked by node-a
	// node-b after node-a unlocked: <nil>
}

// A worker loop: own a shard while you can, start again when the lock is
// lost. Lock waits in arrival order and retries transient etcd errors.
func Example_workerLoop() {
	client := newExampleClient()
	defer client.Close()
	ctx := context.Background()

	for round := 1; round <= 3; round++ {
		err := microlock.WithLock(ctx, client, "examples/shard-7", func(ctx context.Context) error {
			fmt.Println("round", round, "owns shard 7")
			// Real work would run here until it is done or ctx is cancelled.
			return nil
		}, microlock.WithTTL(5*time.Second), microlock.WithNodeID("worker-1"))
		// ErrLockLost first: when fn returns ctx.Err() after a loss, the
		// error also matches context.Canceled, and a lost lock would read
		// as a shutdown.
		switch {
		case errors.Is(err, microlock.ErrLockLost):
			continue // the work was told to stop; go round again
		case errors.Is(err, context.Canceled):
			return // shutting down
		case err != nil:
			log.Fatal(err)
		}
	}
	// Output:
	// round 1 owns shard 7
	// round 2 owns shard 7
	// round 3 owns shard 7
}

// Microlock's 'locked' and 'unlocked' events, whoever takes the lock.
func ExampleWatch() {
	client := newExampleClient()
	defer client.Close()
	ctx, cancel := context.WithCancel(context.Background())

	events, err := microlock.Watch(ctx, client, "examples/leader")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println((<-events).Type)

	m, _ := microlock.New(client, "examples/leader", microlock.WithNodeID("candidate-3"))
	defer m.Close()
	if err := m.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	ev := <-events
	fmt.Println(ev.Type, "by", ev.Holder)
	if err := m.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println((<-events).Type)

	cancel()
	for range events { // closed once the watcher has stopped
	}
	// Output:
	// unlocked
	// locked by candidate-3
	// unlocked
}

// Fencing: a write guarded by IsOwner lands only while the hold lasts, so a
// holder that was paused past its lease cannot overwrite its successor.
func ExampleMutex_IsOwner() {
	client := newExampleClient()
	defer client.Close()
	ctx := context.Background()

	// Keep data outside the lock's prefix ("examples/register-lock/").
	var guard clientv3.Cmp
	err := microlock.WithLock(ctx, client, "examples/register-lock", func(ctx context.Context) error {
		m, _ := microlock.FromContext(ctx)
		guard = m.IsOwner()
		resp, err := client.Txn(ctx).If(guard).Then(clientv3.OpPut("examples/register", "written under the lock")).Commit()
		if err != nil {
			return err
		}
		fmt.Println("write while holding the lock landed:", resp.Succeeded)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// The hold is over: the same guard now refuses a late write.
	resp, err := client.Txn(ctx).If(guard).Then(clientv3.OpPut("examples/register", "late write")).Commit()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("late write landed:", resp.Succeeded)
	// Output:
	// write while holding the lock landed: true
	// late write landed: false
}

// Measure how long work waits for a lock and how long it holds it: the
// events carry what metrics graph. contrib/prometheus and contrib/otel turn
// them into metrics.
func ExampleOnEvent() {
	client := newExampleClient()
	defer client.Close()
	ctx := context.Background()

	queued := make(chan struct{})
	metrics := microlock.OnEvent(func(ev microlock.Event) {
		switch ev.Type {
		case microlock.Queued:
			fmt.Println("queued, keys ahead:", ev.Place)
			close(queued)
		case microlock.Acquired:
			fmt.Println("acquired after waiting:", ev.Waited > 0, "in place", ev.Place)
		case microlock.Released:
			fmt.Println("released after holding:", ev.Held > 0)
		}
	})
	first, _ := microlock.New(client, "examples/measured")
	defer first.Close()
	if err := first.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	second, _ := microlock.New(client, "examples/measured", metrics)
	defer second.Close()
	locked := make(chan error, 1)
	go func() { locked <- second.Lock(ctx) }()
	<-queued
	if err := first.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	if err := <-locked; err != nil {
		log.Fatal(err)
	}
	if err := second.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// queued, keys ahead: 1
	// acquired after waiting: true in place 1
	// released after holding: true
}
