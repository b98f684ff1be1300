//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
	"github.com/microlock/microlock/internal/faultproxy"
)

func demoHelp() help {
	return help{
		usage: "microlock demo [flags]",
		about: `
Show the lock at work in a few seconds. Four workers, each with its own etcd
client, ask for one lock; it passes from one to the next in the order they
asked, and every holder gets a larger fencing token. Then a fifth worker
holds the lock and is cut off from etcd (a proxy between them starts
dropping every byte): its work is cancelled before the next worker can take
over, and the demo prints both times and the margin between them.

With --election, three candidates campaign for one election with
microlock.Lead: the first leads, the others wait in line; the leader is cut
off from etcd, stops leading before the next candidate takes over with a
higher term, and goes back in line once it reaches etcd again.

Without --endpoints, demo starts a single-member etcd on free loopback ports,
with its data in a temporary directory that is removed at the end. It looks
for the etcd binary in --etcd-binary, $MICROLOCK_ETCD, next to the microlock
executable, in bin/etcd, then in $PATH; "make demo" builds the pinned etcd
into bin/ and runs the demo. With --endpoints, demo uses that cluster and
writes only under the key microlock-demo/. demo reads no ETCDCTL_*
variables: it touches no cluster unless you name it on the command line.`,
		examples: `  make demo
  make demo-election
  microlock demo
  microlock demo --election
  microlock demo --etcd-binary /usr/local/bin/etcd
  microlock demo --endpoints 127.0.0.1:2379`,
		connNote: "Connection flags, as in etcdctl, for the cluster named with --endpoints:",
		extra: `Exit codes: 0 when everything behaved as it should; 1 when it did not, or on
another error; 64 usage error; 69 no etcd binary found, or etcd unreachable.`,
	}
}

const (
	demoKey     = "microlock-demo/nightly-report"
	demoWorkers = 4
	demoTTL     = 2 * time.Second
	demoWork    = 400 * time.Millisecond
)

func (c *cli) demo(args []string) error {
	fs := newFlagSet("demo")
	conn := addConnFlags(fs)
	// No default cluster: without --endpoints the demo starts its own.
	conn.endpoints, fs.Lookup("endpoints").DefValue = "", ""
	etcdBin := fs.String("etcd-binary", "", "etcd server `path` to start when no --endpoints is given")
	election := fs.Bool("election", false, "show leader election instead: three candidates, the leader cut off")
	p, err := c.parseOrHelp(fs, args, demoHelp())
	if err != nil {
		return err
	}
	if n := len(p.args) + len(p.rest); n > 0 {
		return usageErrorf("demo: takes no arguments, got %d", n)
	}
	ctx, stop := onSignals(context.Background())
	defer stop()

	var cfg clientv3.Config
	var where string
	if fs.Changed("endpoints") {
		if cfg, err = conn.config(); err != nil {
			return err
		}
		where = "the cluster at " + strings.Join(cfg.Endpoints, ",")
	} else {
		bin, err := findEtcd(*etcdBin, c.getenv)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.stdout, "Starting etcd (%s) in a temporary directory...\n", bin)
		srv, err := etcdtest.LaunchContext(ctx, 1, etcdtest.WithBinary(bin))
		if err != nil {
			if ie := interrupted(ctx); ie != nil {
				return ie
			}
			return fmt.Errorf("microlock: demo: %w", err)
		}
		defer func() {
			srv.Stop()
			fmt.Fprintf(c.stdout, "Stopped etcd and removed %s.\n", srv.Dir())
		}()
		endpoint := srv.Endpoints()[0]
		cfg = clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
		where = "a local etcd at " + endpoint + ", data in " + srv.Dir()
	}

	err = runDemo(ctx, c.stdout, cfg, where, *election)
	if ie := interrupted(ctx); ie != nil {
		return ie
	}
	return err
}

func runDemo(ctx context.Context, w io.Writer, cfg clientv3.Config, where string, election bool) error {
	clients := make([]*clientv3.Client, demoWorkers)
	for i := range clients {
		cli, err := clientv3.New(cfg)
		if err != nil {
			return etcdError(fmt.Errorf("microlock: demo: connecting to etcd: %w", err))
		}
		defer cli.Close()
		clients[i] = cli
	}
	sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
	st, err := clients[0].Status(sctx, cfg.Endpoints[0])
	scancel()
	if err != nil {
		return etcdError(fmt.Errorf("microlock: demo: asking etcd for its status: %w", err))
	}
	fmt.Fprintf(w, "\nmicrolock demo on etcd %s (%s)\n", st.Version, where)
	if election {
		tl := &timeline{w: w, t0: time.Now(), entered: "leads, term %d"}
		err := runElectionDemo(ctx, tl, cfg)
		if tl.overlapped() {
			return errors.New("microlock: demo: two candidates led at once")
		}
		return err
	}
	fmt.Fprintf(w, "Lock %q; every worker has its own etcd client; lease TTL %v.\n", demoKey, demoTTL)

	tl := &timeline{w: w, t0: time.Now()}
	if err := demoContention(ctx, tl, clients); err != nil {
		return err
	}
	stoppedAt, takenAt, err := demoCutOff(ctx, tl, cfg, clients[0])
	if err != nil {
		return err
	}

	holders, tokens := tl.since(0)
	fmt.Fprintf(w, "\nSummary\n")
	fmt.Fprintf(w, "  %d holds of one lock, never two at once: checked on every hold.\n", len(holders))
	fmt.Fprintf(w, "  Fencing tokens, hold after hold: %s.\n", joinTokens(tokens, " < "))
	fmt.Fprintf(w, "  The cut-off worker stopped working %v before the next worker held the lock.\n", takenAt.Sub(stoppedAt).Round(time.Millisecond))
	if tl.overlapped() {
		return errors.New("microlock: demo: two workers held the lock at once")
	}
	return nil
}

// demoContention: workers ask for the lock one after another, then hold it
// in turn.
func demoContention(ctx context.Context, tl *timeline, clients []*clientv3.Client) error {
	fmt.Fprintf(tl.w, "\n1. Workers 1 to %d ask for the lock, 150ms apart; each works %v while holding it.\n", len(clients), demoWork)
	errs := make([]error, len(clients))
	var asked []string
	var askedMu sync.Mutex
	var wg sync.WaitGroup
	for i, cli := range clients {
		name := fmt.Sprintf("worker-%d", i+1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !sleepCtx(ctx, time.Duration(i)*150*time.Millisecond) {
				errs[i] = context.Cause(ctx)
				return
			}
			askedMu.Lock()
			asked = append(asked, name)
			tl.say(name, "asks for the lock")
			askedMu.Unlock()
			errs[i] = microlock.WithLock(ctx, cli, demoKey, func(ctx context.Context) error {
				m, _ := microlock.FromContext(ctx)
				tl.enter(name, m.Token())
				defer tl.leave(name, "done; releases the lock")
				if !sleepCtx(ctx, demoWork) {
					return context.Cause(ctx)
				}
				return nil
			}, microlock.WithNodeID(name), microlock.WithTTL(demoTTL))
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("microlock: demo: %w", err)
	}
	holders, tokens := tl.since(0)
	order := "the order in which they asked"
	if strings.Join(holders, ",") != strings.Join(asked, ",") {
		order = "the order in which etcd received their requests"
	}
	fmt.Fprintf(tl.w, "   The lock went %s: %s.\n", strings.Join(holders, " → "), order)
	fmt.Fprintf(tl.w, "   Each holder's fencing token is larger than the last: %s.\n", joinTokens(tokens, " < "))
	if !increasing(tokens) {
		return errors.New("microlock: demo: fencing tokens did not increase")
	}
	return nil
}

// demoCutOff: a worker whose connection to etcd goes through a proxy holds
// the lock, another waits for it, and the proxy starts dropping every byte.
// It returns when the cut-off worker's work was cancelled and when the
// waiting worker took the lock.
func demoCutOff(ctx context.Context, tl *timeline, cfg clientv3.Config, next *clientv3.Client) (stoppedAt, takenAt time.Time, err error) {
	const cut, waiter = "worker-5", "worker-1"
	fmt.Fprintf(tl.w, "\n2. %s holds the lock and is cut off from etcd; %s waits for the lock.\n", cut, waiter)
	proxy, cutClient, err := dialThroughProxy(cfg)
	if err != nil {
		return stoppedAt, takenAt, err
	}
	defer proxy.Close()
	defer cutClient.Close()

	holding := make(chan struct{})
	cutDone := make(chan error, 1)
	tl.say(cut, "asks for the lock; its connection to etcd runs through a proxy")
	go func() {
		cutDone <- microlock.WithLock(ctx, cutClient, demoKey, func(fctx context.Context) error {
			m, _ := microlock.FromContext(fctx)
			tl.enter(cut, m.Token())
			close(holding)
			<-fctx.Done()
			stoppedAt = time.Now()
			tl.leave(cut, fmt.Sprintf("work cancelled: %v", context.Cause(fctx)))
			return context.Cause(fctx)
		}, microlock.WithNodeID(cut), microlock.WithTTL(demoTTL))
	}()
	select {
	case <-holding:
	case err := <-cutDone:
		return stoppedAt, takenAt, fmt.Errorf("microlock: demo: %s: %w", cut, err)
	}

	tl.say(waiter, "asks for the lock")
	nextDone := demoWorker(ctx, tl, next, waiter, &takenAt)

	var cutAt time.Time
	if sleepCtx(ctx, 700*time.Millisecond) {
		proxy.Blackhole()
		cutAt = time.Now()
		tl.say("proxy", "drops every byte between %s and etcd from now on", cut)
	}
	cutErr, nextErr := <-cutDone, <-nextDone
	if ctx.Err() != nil {
		return stoppedAt, takenAt, context.Cause(ctx)
	}
	if !errors.Is(cutErr, microlock.ErrLockLost) {
		return stoppedAt, takenAt, fmt.Errorf("microlock: demo: %s ended with %v, want a lost lock", cut, cutErr)
	}
	if nextErr != nil {
		return stoppedAt, takenAt, fmt.Errorf("microlock: demo: %s: %w", waiter, nextErr)
	}
	return stoppedAt, takenAt, reportCutOff(tl, cut, waiter, cutAt, stoppedAt, takenAt)
}

// demoWorker takes the lock as who, on a goroutine of its own, notes in
// *takenAt when it got it, and works demoWork while holding it. The channel
// returns WithLock's error; *takenAt is set once it has.
func demoWorker(ctx context.Context, tl *timeline, client *clientv3.Client, who string, takenAt *time.Time) <-chan error {
	done := make(chan error, 1)
	go func() {
		done <- microlock.WithLock(ctx, client, demoKey, func(ctx context.Context) error {
			*takenAt = time.Now()
			m, _ := microlock.FromContext(ctx)
			tl.enter(who, m.Token())
			defer tl.leave(who, "done; releases the lock")
			if !sleepCtx(ctx, demoWork) {
				return context.Cause(ctx)
			}
			return nil
		}, microlock.WithNodeID(who), microlock.WithTTL(demoTTL))
	}()
	return done
}

// dialThroughProxy starts a proxy to cfg's first endpoint and connects a
// client through it. The caller closes both.
func dialThroughProxy(cfg clientv3.Config) (*faultproxy.Proxy, *clientv3.Client, error) {
	proxy, err := faultproxy.New(cfg.Endpoints[0])
	if err != nil {
		return nil, nil, fmt.Errorf("microlock: demo: %w", err)
	}
	cutCfg, err := throughProxy(cfg, proxy.Addr())
	if err != nil {
		proxy.Close()
		return nil, nil, err
	}
	client, err := clientv3.New(cutCfg)
	if err != nil {
		proxy.Close()
		return nil, nil, etcdError(fmt.Errorf("microlock: demo: connecting through the proxy: %w", err))
	}
	return proxy, client, nil
}

// reportCutOff prints when the cut-off worker stopped and the waiter took
// over, and fails unless the one came before the other.
func reportCutOff(tl *timeline, cut, waiter string, cutAt, stoppedAt, takenAt time.Time) error {
	fmt.Fprintf(tl.w, "   %s's work was cancelled %v after it was cut off; %s took over %v after the cut.\n",
		cut, stoppedAt.Sub(cutAt).Round(time.Millisecond), waiter, takenAt.Sub(cutAt).Round(time.Millisecond))
	if !stoppedAt.Before(takenAt) {
		return fmt.Errorf("microlock: demo: %s still worked %v after %s took the lock",
			cut, stoppedAt.Sub(takenAt), waiter)
	}
	fmt.Fprintf(tl.w, "   Margin: %s stopped %v before %s could start. The library gives up on a lease\n"+
		"   max(250ms, TTL/10) before the earliest moment etcd could expire it, counted from the\n"+
		"   last renewal etcd acknowledged; etcd notices expired leases within about 500ms more.\n",
		cut, takenAt.Sub(stoppedAt).Round(time.Millisecond), waiter)
	return nil
}

// throughProxy returns cfg with its first endpoint replaced by the proxy at
// addr; a TLS client still checks the real server's name.
func throughProxy(cfg clientv3.Config, addr string) (clientv3.Config, error) {
	ep := cfg.Endpoints[0]
	scheme, host := "", ep
	if i := strings.Index(ep, "://"); i >= 0 {
		u, err := url.Parse(ep)
		if err != nil {
			return cfg, usageErrorf("demo: endpoint %q: %v", ep, err)
		}
		scheme, host = u.Scheme+"://", u.Host
	}
	cfg.Endpoints = []string{scheme + addr}
	if cfg.TLS != nil && cfg.TLS.ServerName == "" {
		cfg.TLS = cfg.TLS.Clone()
		cfg.TLS.ServerName = strings.Split(host, ":")[0]
	}
	return cfg, nil
}

// sleepCtx sleeps for d and reports whether ctx was still live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func increasing(tokens []int64) bool {
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			return false
		}
	}
	return true
}

func joinTokens(tokens []int64, sep string) string {
	s := make([]string, len(tokens))
	for i, t := range tokens {
		s[i] = fmt.Sprint(t)
	}
	return strings.Join(s, sep)
}
