package microlock_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

// A leader loop: campaign, lead while elected, campaign again after each
// term. The OnEvent hook tells the service whether it leads now, and
// IsOwner fences the leader's writes, so a deposed leader's late write
// cannot land.
func ExampleLead() {
	client := newExampleClient()
	defer client.Close()
	ctx, shutdown := context.WithCancel(context.Background())
	defer shutdown()

	leading := func(ev microlock.Event) {
		switch ev.Type {
		case microlock.Acquired:
			fmt.Println("leader: yes")
		case microlock.Released, microlock.Lost:
			fmt.Println("leader: no")
		}
	}
	terms := 0
	err := microlock.Lead(ctx, client, "examples/scheduler", func(ctx context.Context) error {
		// ctx is cancelled as soon as leadership is lost: stop then.
		m, _ := microlock.FromContext(ctx)
		terms++
		resp, err := client.Txn(ctx).If(m.IsOwner()).
			Then(clientv3.OpPut("examples/scheduler-state", fmt.Sprint("written in term ", m.Token()))).
			Commit()
		if err != nil {
			return err
		}
		fmt.Printf("term %d: the fenced write landed: %v\n", terms, resp.Succeeded)
		if terms == 2 {
			shutdown() // a real service stops on SIGTERM
		}
		return nil // end this term: resign, and campaign again
	}, microlock.WithNodeID("scheduler-1"), microlock.OnEvent(leading))
	if !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
	fmt.Println("stopped")
	// Output:
	// leader: yes
	// term 1: the fenced write landed: true
	// leader: no
	// leader: yes
	// term 2: the fenced write landed: true
	// leader: no
	// stopped
}
