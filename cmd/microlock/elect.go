//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

func electHelp() help {
	return help{
		usage: "microlock elect [flags] KEY -- CMD [ARGS...]\n       microlock elect --listen [--json] [flags] KEY",
		about: `
Campaign for the leadership of KEY in etcd and run CMD each time this node
becomes the leader; campaign again when CMD exits or leadership is lost,
until SIGINT or SIGTERM. --once stops after the first term. Candidates line
up in arrival order, as in etcdctl elect and etcd's concurrency.Election,
which take part in the same elections.

CMD runs as in "microlock run": in its own process group, with MICROLOCK_KEY,
MICROLOCK_NODE_ID and MICROLOCK_TOKEN (the term's fencing token, which grows
with every new leader) in its environment; SIGINT and SIGTERM sent to elect
are passed on to it, and elect then exits with its status once it has
exited. If leadership is lost while CMD runs, CMD's process group gets
SIGTERM at once and SIGKILL --grace later, both before etcd could elect
another leader, and elect campaigns again (with --once it exits with 76).
A CMD that exits, whatever its status, ends the term: elect resigns and
campaigns again behind the candidates already waiting, so a CMD that fails
at once is started again as soon as this node leads again.

With --listen, elect campaigns for nothing: it prints the current leader,
then one line per change of leader or of the leader's value, and "no leader"
when there is none, as etcdctl elect -l does, until SIGINT or SIGTERM.`,
		examples: `  # Run the scheduler on one machine at a time; another takes over if it is cut off.
  microlock elect --node-id "$(hostname)" services/scheduler -- ./scheduler

  # Lead once, as a step of a larger script.
  microlock elect --once jobs/leader-only -- ./migrate

  # Follow the leadership.
  microlock elect --listen services/scheduler
  microlock elect --listen --json services/scheduler | jq -r .leader`,
		extra: `JSON fields (--listen --json): time (RFC 3339, local), key, event ("leader" or
"no leader"), leader (its value: a node ID, or whatever an etcd client
proclaimed) and term (its fencing token; 0 with no leader).

Exit codes (as for run):
  CMD's status  elect was stopped by SIGINT or SIGTERM while CMD ran, or
                --once and CMD exited; 128+N when signal N killed CMD
  1             other error
  64            usage error
  69            etcd unreachable or timed out
  76            --once, and leadership was lost while CMD ran
  126, 127      CMD cannot be executed, or was not found
  128+N         stopped by signal N while campaigning
  0             --listen stopped by SIGINT or SIGTERM`,
	}
}

// electFlags are elect's own flags.
type electFlags struct {
	ttl    time.Duration
	nodeID string
	grace  time.Duration
	once   bool
	listen bool
	asJSON bool
}

func (c *cli) elect(args []string) error {
	fs := newFlagSet("elect")
	conn := addConnFlags(fs)
	f := electFlags{ttl: microlock.DefaultTTL}
	fs.Var(durationFlag{&f.ttl}, "ttl", "lease `TTL`; etcd grants whole seconds, at least 1s")
	fs.StringVar(&f.nodeID, "node-id", "", "`ID` this node campaigns with: the leader's value (default: hostname:pid)")
	fs.Var(durationFlag{&f.grace}, "grace", graceHelp())
	fs.BoolVar(&f.once, "once", false, "stop after the first term")
	fs.BoolVar(&f.listen, "listen", false, "print every change of leader instead of campaigning (etcdctl elect -l)")
	fs.BoolVar(&f.asJSON, "json", false, "with --listen: print one JSON object per line")
	p, err := c.parseOrHelp(fs, args, electHelp())
	if err != nil {
		return err
	}
	if f.listen {
		for _, name := range []string{"ttl", "node-id", "grace", "once"} {
			if fs.Changed(name) {
				return usageErrorf("elect: --%s has no use with --listen", name)
			}
		}
		if p.hasDash {
			return usageErrorf("elect: --listen takes KEY only, no command")
		}
		key, err := oneArg("elect", "KEY", p)
		if err != nil {
			return err
		}
		return c.listen(fs, conn, key, f.asJSON)
	}
	if err := checkElectArgs(p, f, fs.Changed("json")); err != nil {
		return err
	}
	if !fs.Changed("grace") {
		f.grace = maxGrace(f.ttl)
	} else if err := checkGrace(f.grace, f.ttl); err != nil {
		return usageErrorf("elect: %s", strings.TrimPrefix(err.Error(), "microlock: run: "))
	}
	if err := conn.applyEnv(fs, c.getenv); err != nil {
		return err
	}
	// Look the command up before campaigning: a typo should not cost the
	// other candidates a term.
	path, err := exec.LookPath(p.rest[0])
	if err != nil {
		return startError(err)
	}
	return c.campaign(conn, p.args[0], path, p.rest, f)
}

// checkElectArgs checks the arguments of elect without --listen.
func checkElectArgs(p parsed, f electFlags, jsonGiven bool) error {
	switch {
	case len(p.args) == 0:
		return usageErrorf("elect: missing KEY")
	case !p.hasDash:
		return usageErrorf(`elect: missing "--" between KEY and the command (or --listen)`)
	case len(p.args) > 1:
		return usageErrorf("elect: one KEY expected before \"--\", got %d arguments: %q", len(p.args), p.args)
	case len(p.rest) == 0:
		return usageErrorf(`elect: missing the command after "--"`)
	case p.args[0] == "":
		return usageErrorf("elect: empty KEY")
	case f.ttl < microlock.MinTTL:
		return usageErrorf("elect: --ttl %v is below the minimum of %v", f.ttl, microlock.MinTTL)
	case jsonGiven:
		return usageErrorf("elect: --json has use only with --listen")
	}
	return nil
}

// campaign runs the leader loop: microlock.Lead, with one run of the
// command per term.
func (c *cli) campaign(conn *connFlags, key, path string, argv []string, f electFlags) error {
	log := startEventLog(c.stderr)
	defer log.stop()
	opts := []microlock.Option{microlock.WithTTL(f.ttl), microlock.OnEvent(log.hook)}
	if f.nodeID != "" {
		opts = append(opts, microlock.WithNodeID(f.nodeID))
	}
	client, err := conn.client()
	if err != nil {
		return err
	}
	defer client.Close()
	m, err := microlock.New(client, key, opts...) // no I/O: checks the options
	if err != nil {
		return usageErrorf("elect: %v", err)
	}
	_ = m.Close()
	// Lead retries etcd errors for as long as it campaigns: check first
	// that etcd answers at all, so that a wrong endpoint fails fast.
	pctx, pcancel := context.WithTimeout(context.Background(), conn.commandTimeout)
	_, err = client.Get(pctx, key+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	pcancel()
	if err != nil {
		return etcdError(fmt.Errorf("microlock: reaching etcd at %s: %w", conn.endpoints, err))
	}

	e := &election{c: c, key: key, path: path, argv: argv, grace: f.grace, once: f.once, termSigs: make(chan os.Signal, 4)}
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	stop := e.relaySignals(cancel)
	defer stop()
	err = microlock.Lead(ctx, client, key, e.term, opts...)
	switch {
	case errors.Is(err, errStopElecting):
		return e.result
	case interrupted(ctx) != nil:
		return interrupted(ctx)
	default:
		return etcdError(err)
	}
}

// errStopElecting is what a term returns to end Lead: the result is in
// election.result.
var errStopElecting = errors.New("microlock: elect: done")

// election is the state of elect's leader loop.
type election struct {
	c         *cli
	key, path string
	argv      []string
	grace     time.Duration
	once      bool
	termSigs  chan os.Signal // SIGINT and SIGTERM that came during a term, for CMD
	mu        sync.Mutex
	inTerm    bool
	signalled bool  // a signal came: stop after the current term
	result    error // why elect stops, set with errStopElecting
}

// relaySignals passes SIGINT and SIGTERM on to the command during a term,
// and cancels the campaign with them otherwise. stop ends it.
func (e *election) relaySignals(cancel context.CancelCauseFunc) (stop func()) {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case s := <-sigs:
				e.mu.Lock()
				e.signalled = true
				if e.inTerm {
					select {
					case e.termSigs <- s:
					default: // four pending already: the command has them
					}
				} else {
					cancel(&interruptError{sig: s})
				}
				e.mu.Unlock()
			case <-quit:
				return
			}
		}
	}()
	return func() {
		close(quit)
		<-done
		signal.Stop(sigs)
	}
}

// term is Lead's fn: run the command while this node leads.
func (e *election) term(ctx context.Context) error {
	m, _ := microlock.FromContext(ctx)
	e.mu.Lock()
	if e.signalled {
		e.mu.Unlock()
		return ctx.Err() // the campaign was cancelled just now
	}
	e.inTerm = true
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.inTerm = false
		e.mu.Unlock()
	}()
	cmd := exec.Command(e.path, e.argv[1:]...)
	cmd.Env = append(os.Environ(),
		"MICROLOCK_KEY="+e.key,
		"MICROLOCK_NODE_ID="+m.NodeID(),
		"MICROLOCK_TOKEN="+strconv.FormatInt(m.Token(), 10),
	)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	ch, err := startChild(cmd)
	if err != nil {
		e.result = startError(err)
		return errStopElecting
	}
	status, lost := e.c.supervise(m, ch, e.termSigs, e.grace)
	e.mu.Lock()
	stopping := e.signalled || e.once
	e.mu.Unlock()
	switch {
	case lost != nil && stopping:
		e.result = &exitError{code: exitLost, err: fmt.Errorf("microlock: the command was stopped because the leadership of %q was lost", e.key)}
		return errStopElecting
	case lost != nil:
		fmt.Fprintf(e.c.stderr, "microlock: campaigning again for %q\n", e.key)
		return ctx.Err() // lost: Lead campaigns again
	case stopping:
		e.result = &exitError{code: status}
		return errStopElecting
	}
	fmt.Fprintf(e.c.stderr, "microlock: the command exited with status %d; campaigning again for %q\n", status, e.key)
	return nil
}
