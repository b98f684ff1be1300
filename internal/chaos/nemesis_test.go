package chaos_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock/internal/chaos"
	"github.com/microlock/microlock/internal/etcdtest"
)

// nemesis injects faults on a schedule and keeps the timeline of what it
// did, on the clock the workers share.
type nemesis struct {
	t       *testing.T
	c       *etcdtest.Cluster
	admin   *clientv3.Client // straight to the members, never through a proxy
	members []*clientv3.Client
	workers []*workerProc
	prefix  string // the lock's queue prefix
	counter string
	ttl     time.Duration
	rng     *rand.Rand
	faults  []chaos.Fault
}

// requestTimeout bounds the nemesis's own etcd requests: a member it paused
// must not hang it.
const requestTimeout = time.Second

func (n *nemesis) logf(format string, args ...any) {
	n.t.Helper()
	n.t.Logf("%s "+format, append([]any{time.Now().Format("15:04:05.000")}, args...)...)
}

// run injects every step: after its gap, with the cluster healthy, it
// injects the fault, undoes it after its duration, and waits until the
// workers make progress again.
func (n *nemesis) run(ctx context.Context, steps []chaos.Step) error {
	for i, s := range steps {
		if err := sleep(ctx, s.Gap); err != nil {
			return err
		}
		if err := n.settle(ctx); err != nil {
			return err
		}
		f, err := n.inject(ctx, s)
		if err != nil {
			return fmt.Errorf("fault %d (%s): %v", i+1, s.Kind, err)
		}
		n.faults = append(n.faults, f)
		took, err := n.progress(ctx, f.Heal)
		if err != nil {
			return err
		}
		caught := ""
		if f.Holding {
			caught = fmt.Sprintf(", holding token %d", f.Token)
		}
		n.logf("fault %d/%d: %s of %s%s for %v; progress %v after heal",
			i+1, len(steps), f.Kind, f.Target, caught, f.Duration().Round(time.Millisecond), took.Round(time.Millisecond))
	}
	return nil
}

// inject applies one fault and undoes it.
func (n *nemesis) inject(ctx context.Context, s chaos.Step) (chaos.Fault, error) {
	f := chaos.Fault{Kind: s.Kind}
	var err error
	switch s.Kind {
	case chaos.WorkerPartition, chaos.WorkerPause:
		err = n.injectWorker(ctx, s, &f)
	case chaos.MemberPartition, chaos.MemberPause:
		err = n.injectMember(ctx, s, &f)
	case chaos.LeaderKill, chaos.FollowerKill:
		err = n.injectKill(ctx, s, &f)
	default:
		return f, fmt.Errorf("unknown fault kind %q", s.Kind)
	}
	return f, err
}

// injectWorker cuts off or pauses the worker that holds the lock, at a
// random moment of its hold, for s.Duration.
func (n *nemesis) injectWorker(ctx context.Context, s chaos.Step, f *chaos.Fault) error {
	act, undo := (*workerProc).cut, (*workerProc).heal
	if s.Kind == chaos.WorkerPause {
		act = func(w *workerProc) { n.check(w.pause()) }
		undo = func(w *workerProc) { n.check(w.resume()) }
	}
	w, start, token, err := n.catchHolder(ctx, s.Pick, act, undo)
	if err != nil {
		return err
	}
	f.Target, f.Start, f.Holding, f.Token = w.node, start, token != 0, token
	err = sleep(ctx, s.Duration)
	undo(w)
	f.Heal = chaos.Now()
	return err
}

// injectMember partitions a member from its peers, or pauses it, for
// s.Duration.
func (n *nemesis) injectMember(ctx context.Context, s chaos.Step, f *chaos.Fault) error {
	m := n.c.Members[s.Pick%uint64(len(n.c.Members))]
	f.Target, f.Start = m.Name, chaos.Now()
	if s.Kind == chaos.MemberPartition {
		n.c.Isolate(m)
		err := sleep(ctx, s.Duration)
		n.c.HealPeers()
		f.Heal = chaos.Now()
		return err
	}
	if err := m.Pause(); err != nil {
		return err
	}
	err := sleep(ctx, s.Duration)
	if rerr := m.Resume(); err == nil {
		err = rerr
	}
	f.Heal = chaos.Now()
	return err
}

// injectKill kills the leader, or a follower, and restarts it after
// s.Duration.
func (n *nemesis) injectKill(ctx context.Context, s chaos.Step, f *chaos.Fault) error {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	leader, err := n.c.Leader(lctx)
	cancel()
	if err != nil {
		return err
	}
	m := leader
	if s.Kind == chaos.FollowerKill {
		var followers []*etcdtest.Member
		for _, o := range n.c.Members {
			if o != leader {
				followers = append(followers, o)
			}
		}
		m = followers[s.Pick%uint64(len(followers))]
	}
	f.Target, f.Start = m.Name, chaos.Now()
	if err := m.Kill(); err != nil {
		return err
	}
	err = sleep(ctx, s.Duration)
	if rerr := m.Restart(); err == nil {
		err = rerr
	}
	f.Heal = chaos.Now()
	return err
}

// catchHolder applies act to the worker that holds the lock, at a random
// moment of its hold, and checks in etcd that it still held it once act had
// taken effect. A hold lasts milliseconds, so it may have ended in between:
// then undo, and try again. After many misses, act on the worker that pick
// chooses. It returns the worker, when act took effect, and the token of
// the hold it caught (0 if none).
func (n *nemesis) catchHolder(ctx context.Context, pick uint64, act, undo func(*workerProc)) (w *workerProc, start, token int64, err error) {
	const attempts = 50
	for range attempts {
		node, held, err := n.holder(ctx)
		if err != nil {
			return nil, 0, 0, err
		}
		if w = n.worker(node); w != nil {
			// A random moment of the hold: during the read, between the
			// read and the write, or later.
			if err := sleep(ctx, time.Duration(n.rng.IntN(13))*time.Millisecond); err != nil {
				return nil, 0, 0, err
			}
			start = chaos.Now()
			act(w)
			// Long enough for a release that was already on its way.
			if err := sleep(ctx, 50*time.Millisecond); err != nil {
				return nil, 0, 0, err
			}
			_, now, err := n.holder(ctx)
			if err != nil {
				return nil, 0, 0, err
			}
			if now == held {
				return w, start, held, nil
			}
			undo(w)
		}
		if err := sleep(ctx, time.Duration(10+n.rng.IntN(50))*time.Millisecond); err != nil {
			return nil, 0, 0, err
		}
	}
	w = n.workers[pick%uint64(len(n.workers))]
	n.logf("no holder caught in %d attempts; %s instead", attempts, w.node)
	start = chaos.Now()
	act(w)
	return w, start, 0, nil
}

// holder returns the node ID and token of the lock's holder ("", 0 if it is
// free), retrying for a while if etcd does not answer.
func (n *nemesis) holder(ctx context.Context) (string, int64, error) {
	var resp *clientv3.GetResponse
	err := n.retry(ctx, func(ctx context.Context) (err error) {
		resp, err = n.admin.Get(ctx, n.prefix, clientv3.WithFirstCreate()...)
		return err
	})
	if err != nil || len(resp.Kvs) == 0 {
		return "", 0, err
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].CreateRevision, nil
}

func (n *nemesis) worker(node string) *workerProc {
	for _, w := range n.workers {
		if w.node == node {
			return w
		}
	}
	return nil
}

// settle waits until every member serves a linearizable read.
func (n *nemesis) settle(ctx context.Context) error {
	for _, cli := range n.members {
		if err := n.retry(ctx, func(ctx context.Context) error {
			_, err := cli.Get(ctx, n.counter)
			return err
		}); err != nil {
			return fmt.Errorf("cluster not healthy: %v", err)
		}
	}
	return nil
}

// progress waits until the counter is written after since (a Now reading),
// and returns how long after since that was. It gives up after TTL + 5 s
// with no error: the checker reports a stall.
func (n *nemesis) progress(ctx context.Context, since int64) (time.Duration, error) {
	var start int64
	if err := n.retry(ctx, func(ctx context.Context) error {
		resp, err := n.admin.Get(ctx, n.counter)
		if err == nil {
			start = resp.Header.Revision
		}
		return err
	}); err != nil {
		return 0, err
	}
	limit := since + int64(n.ttl+chaos.LivenessSlack)
	for chaos.Now() < limit {
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		resp, err := n.admin.Get(rctx, n.counter)
		cancel()
		if err == nil && len(resp.Kvs) > 0 && resp.Kvs[0].ModRevision > start {
			return time.Duration(chaos.Now() - since), nil
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return 0, err
		}
	}
	n.logf("no progress within %v of a heal", n.ttl+chaos.LivenessSlack)
	return time.Duration(chaos.Now() - since), nil
}

// retry runs fn with a per-attempt timeout until it succeeds, for up to
// 30 s.
func (n *nemesis) retry(ctx context.Context, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, requestTimeout)
		err := fn(actx)
		acancel()
		if err == nil {
			return nil
		}
		if serr := sleep(ctx, 100*time.Millisecond); serr != nil {
			return fmt.Errorf("%v (last error: %v)", serr, err)
		}
	}
}

// check fails the test, from the nemesis's goroutine, on an error that
// leaves the run meaningless.
func (n *nemesis) check(err error) {
	if err != nil {
		n.t.Fatal(err)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
