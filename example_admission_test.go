package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"sync"
	"sync/atomic"
	"time"

	"github.com/microlock/microlock"
)

// At most 2 video encoders at once, across the fleet: a counting
// semaphore. Six jobs contend; never more than two run together.
func ExampleWithLimit() {
	client := newExampleClient()
	defer client.Close()
	ctx := context.Background()

	var running, most atomic.Int32
	var wg sync.WaitGroup
	for job := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := microlock.WithLock(ctx, client, "examples/encoders", func(ctx context.Context) error {
				n := running.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				time.Sleep(20 * time.Millisecond) // encode
				running.Add(-1)
				return nil
			}, microlock.WithLimit(2), microlock.WithNodeID(fmt.Sprint("encoder-", job)))
			if err != nil {
				log.Fatal(err)
			}
		}()
	}
	wg.Wait()
	fmt.Println("at most", most.Load(), "encoders ran at once")

	// A client that believes the limit is 3 is refused while the key is in
	// use with limit 2, rather than admitted as a third.
	a, _ := microlock.New(client, "examples/encoders", microlock.WithLimit(2))
	defer a.Close()
	if err := a.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	b, _ := microlock.New(client, "examples/encoders", microlock.WithLimit(3))
	defer b.Close()
	fmt.Println("limit 3 refused:", errors.Is(b.Lock(ctx), microlock.ErrMismatch))
	// Output:
	// at most 2 encoders ran at once
	// limit 3 refused: true
}

// Many readers or one writer: shared holds hold together, an exclusive
// lock waits for them, and a reader that comes after a waiting writer
// waits for the writer.
func ExampleShared() {
	client := newExampleClient()
	defer client.Close()
	ctx := context.Background()

	r1, _ := microlock.New(client, "examples/catalog", microlock.Shared(), microlock.WithNodeID("reader-1"))
	defer r1.Close()
	r2, _ := microlock.New(client, "examples/catalog", microlock.Shared(), microlock.WithNodeID("reader-2"))
	defer r2.Close()
	if err := r1.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	if err := r2.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	ev, _ := microlock.Holder(ctx, client, "examples/catalog")
	fmt.Println(ev.Holders, "readers hold it:", ev.HeldBy[0].Holder, ev.HeldBy[1].Holder)

	writer, _ := microlock.New(client, "examples/catalog", microlock.WithNodeID("writer"))
	defer writer.Close()
	var locked *microlock.AlreadyLockedError
	if err := writer.TryLock(ctx); errors.As(err, &locked) {
		fmt.Println("the writer must wait for", locked.Holder)
	}
	_ = r1.Unlock(ctx)
	_ = r2.Unlock(ctx)
	fmt.Println("the writer, once the readers left:", writer.TryLock(ctx))
	ev, _ = microlock.Holder(ctx, client, "examples/catalog")
	fmt.Println("held by", ev.Holder, "alone:", ev.Holders == 1)
	_ = writer.Unlock(ctx)
	// Output:
	// 2 readers hold it: reader-1 reader-2
	// the writer must wait for reader-1
	// the writer, once the readers left: <nil>
	// held by writer alone: true
}
