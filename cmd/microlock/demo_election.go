//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/faultproxy"
)

const (
	demoElection   = "microlock-demo/scheduler"
	demoCandidates = 3
)

// candidateRun is one candidate of the election demo: a microlock.Lead
// on a client of its own.
type candidateRun struct {
	name    string
	client  *clientv3.Client
	done    chan error
	stopped time.Time // when its term's work was told to stop (lost)
	mu      sync.Mutex
}

// runElectionDemo shows three candidates of one election: the first leads,
// the others wait in line; the leader is cut off from etcd, stops leading
// before the next candidate takes over with a higher term, and campaigns
// again once it can reach etcd.
func runElectionDemo(ctx context.Context, tl *timeline, cfg clientv3.Config) error {
	fmt.Fprintf(tl.w, "Election %q; %d candidates run microlock.Lead, each on its own etcd client;\n"+
		"lease TTL %v. candidate-1 reaches etcd through a proxy.\n", demoElection, demoCandidates, demoTTL)
	proxy, err := faultproxy.New(cfg.Endpoints[0])
	if err != nil {
		return fmt.Errorf("microlock: demo: %w", err)
	}
	defer proxy.Close()
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	cands, err := demoClients(cfg, proxy.Addr())
	if err != nil {
		return err
	}
	defer func() {
		for _, c := range cands {
			c.client.Close()
		}
	}()

	fmt.Fprintf(tl.w, "\n1. The candidates campaign, 150ms apart; the first leads, the others wait in line.\n")
	for i, c := range cands {
		if i > 0 && !sleepCtx(ctx, 150*time.Millisecond) {
			return context.Cause(ctx)
		}
		tl.say(c.name, "campaigns")
		go func() { c.done <- c.lead(ctx, tl) }()
	}
	if err := waitQueue(ctx, cands[0].client, demoCandidates); err != nil {
		return err
	}

	stoppedAt, takenAt, err := cutLeader(ctx, tl, proxy, cands[0])
	if err != nil {
		return err
	}

	fmt.Fprintf(tl.w, "\n3. candidate-1 reaches etcd again, and goes back in line.\n")
	proxy.Heal()
	tl.say("proxy", "passes traffic again")
	if err := waitQueue(ctx, cands[1].client, demoCandidates); err != nil {
		return err
	}
	tl.say("candidate-1", "is back in line, behind candidate-3")

	stop()
	for _, c := range cands {
		if err := <-c.done; err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("microlock: demo: %s: %w", c.name, err)
		}
	}
	holders, tokens := tl.since(0)
	fmt.Fprintf(tl.w, "\nSummary\n")
	fmt.Fprintf(tl.w, "  Leaders in turn: %s; never two at once: checked on every term.\n", strings.Join(holders, " → "))
	fmt.Fprintf(tl.w, "  Terms (fencing tokens): %s.\n", joinTokens(tokens, " < "))
	fmt.Fprintf(tl.w, "  The cut-off leader stopped %v before the next one led.\n", takenAt.Sub(stoppedAt).Round(time.Millisecond))
	if !increasing(tokens) {
		return errors.New("microlock: demo: terms did not increase")
	}
	return nil
}

// cutLeader cuts the leader off from etcd and waits for the next leader. It
// returns when the cut-off leader stopped leading and when the next one
// started, and fails unless the one came before the other, with a higher
// term.
func cutLeader(ctx context.Context, tl *timeline, proxy *faultproxy.Proxy, leader *candidateRun) (stoppedAt, takenAt time.Time, err error) {
	fmt.Fprintf(tl.w, "\n2. The leader, %s, is cut off from etcd.\n", leader.name)
	proxy.Blackhole()
	cutAt := time.Now()
	tl.say("proxy", "drops every byte between %s and etcd from now on", leader.name)
	if err := waitLeaders(ctx, tl, 2); err != nil {
		return stoppedAt, takenAt, err
	}
	holders, tokens := tl.since(0)
	takenAt, stoppedAt = tl.enteredAt(1), leader.stoppedAt()
	fmt.Fprintf(tl.w, "   %s stopped leading %v after the cut; %s took over %v after it, with term %d > %d.\n",
		leader.name, stoppedAt.Sub(cutAt).Round(time.Millisecond), holders[1], takenAt.Sub(cutAt).Round(time.Millisecond), tokens[1], tokens[0])
	if stoppedAt.IsZero() || !stoppedAt.Before(takenAt) || tokens[1] <= tokens[0] {
		return stoppedAt, takenAt, fmt.Errorf("microlock: demo: %s stopped at %v, the next leader started at %v with term %d after %d",
			leader.name, stoppedAt.Sub(cutAt), takenAt.Sub(cutAt), tokens[1], tokens[0])
	}
	return stoppedAt, takenAt, nil
}

// demoClients makes the candidates, the first one's client through the
// proxy at addr.
func demoClients(cfg clientv3.Config, addr string) ([]*candidateRun, error) {
	var cands []*candidateRun
	for i := range demoCandidates {
		ccfg := cfg
		if i == 0 {
			var err error
			if ccfg, err = throughProxy(cfg, addr); err != nil {
				return nil, err
			}
		}
		cli, err := clientv3.New(ccfg)
		if err != nil {
			for _, c := range cands {
				c.client.Close()
			}
			return nil, etcdError(fmt.Errorf("microlock: demo: connecting to etcd: %w", err))
		}
		cands = append(cands, &candidateRun{name: fmt.Sprintf("candidate-%d", i+1), client: cli, done: make(chan error, 1)})
	}
	return cands, nil
}

// lead runs the candidate's leader loop until ctx ends.
func (c *candidateRun) lead(ctx context.Context, tl *timeline) error {
	return microlock.Lead(ctx, c.client, demoElection, func(fctx context.Context) error {
		m, _ := microlock.FromContext(fctx)
		tl.enter(c.name, m.Token())
		<-fctx.Done()
		if cause := context.Cause(fctx); errors.Is(cause, microlock.ErrLockLost) {
			c.mu.Lock()
			c.stopped = time.Now()
			c.mu.Unlock()
			tl.leave(c.name, fmt.Sprintf("stops leading: %v; will campaign again", cause))
		} else {
			tl.leave(c.name, "resigns")
		}
		return fctx.Err()
	}, microlock.WithNodeID(c.name), microlock.WithTTL(demoTTL))
}

func (c *candidateRun) stoppedAt() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped
}

// waitQueue waits until n candidates are in the election's queue.
func waitQueue(ctx context.Context, cli *clientv3.Client, n int64) error {
	for {
		resp, err := cli.Get(ctx, demoElection+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil && resp.Count >= n {
			return nil
		}
		if !sleepCtx(ctx, 20*time.Millisecond) {
			return context.Cause(ctx)
		}
	}
}

// waitLeaders waits until n terms have started.
func waitLeaders(ctx context.Context, tl *timeline, n int) error {
	deadline := time.Now().Add(4 * demoTTL)
	for {
		if holders, _ := tl.since(0); len(holders) >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("microlock: demo: no new leader within %v of the cut", 4*demoTTL)
		}
		if !sleepCtx(ctx, 10*time.Millisecond) {
			return context.Cause(ctx)
		}
	}
}
