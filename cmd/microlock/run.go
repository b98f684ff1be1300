//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/spf13/pflag"

	"github.com/microlock/microlock"
)

func runHelp() help {
	return help{
		usage: "microlock run [flags] KEY -- CMD [ARGS...]",
		about: `
Take the lock KEY in etcd, run CMD while holding it, release the lock when
CMD exits, and exit with CMD's status (128+N when signal N killed it).

run waits for the lock in arrival order; --no-wait fails at once if someone
else holds it, and --wait-timeout gives up after a while. CMD runs in its own
process group with MICROLOCK_KEY, MICROLOCK_NODE_ID and MICROLOCK_TOKEN in
its environment. MICROLOCK_TOKEN is the fencing token: it grows with every
new holder of KEY, so the systems CMD writes to can refuse a stale holder.
SIGINT and SIGTERM sent to run are passed on to CMD's process group.

--limit N makes KEY a counting semaphore: up to N runs hold it at once, in
arrival order; every run on KEY must give the same N, and one that does not
is refused (exit code 1). --shared takes a shared (read) hold: shared runs
hold KEY together, while a run without it (or etcdctl lock, or etcd's own
Mutex) holds it alone; a waiting exclusive run blocks later shared ones.
MICROLOCK_TOKEN orders exclusive holders only: with --limit or --shared it
identifies the hold, but a "refuse older tokens" fence does not apply.

If the lock is lost while CMD runs (its lease could not be renewed in time,
or its key was deleted), run sends SIGTERM to CMD's process group at once and
SIGKILL --grace later, both before etcd could let another holder in, and
exits with 76. The lock is declared lost max(250ms, TTL/10) before etcd could
expire it; 100ms of that is kept for delivering the signals.

run releases the lock and exits as soon as CMD exits: processes that CMD
started in the background and left running are neither waited for nor
killed, and go on without the lock. While CMD runs they share its process
group, so the signals that run passes on or sends reach them too.

CMD's standard input is run's, but CMD cannot read from a terminal: its
process group is not the terminal's foreground group, so the kernel stops it
(SIGTTIN) as soon as it tries, and it stays stopped with the lock held. The
SIGINT or SIGTERM that run passes on then waits until CMD's group gets
SIGCONT (kill -CONT -PGID); SIGKILL, or microlock break KEY, ends it. Give
CMD its input from a file or a pipe, or </dev/null.

--metrics-addr ADDR serves the lock's metrics at http://ADDR/metrics, in the
Prometheus text format, from start to exit: the wait for the lock, the
hold, renewals, retries and a loss, with the series of the library's
Prometheus adapter (microlock_acquire_wait_seconds, microlock_hold_seconds,
microlock_held, microlock_waiting, ...), so that a node agent can scrape a
cron job while it waits and runs. Off by default. ADDR is host:port; port 0
picks a free one, and run says on stderr where it serves.`,
		examples: `  # Run the nightly report on one machine at a time; the others wait their turn.
  microlock run jobs/nightly-report -- ./nightly-report.sh

  # From cron: skip this run when another machine has the lock.
  microlock run --no-wait --endpoints 10.0.0.1:2379,10.0.0.2:2379 jobs/backup -- backup --full

  # Give the work the fencing token, and 5 s to shut down if the lock is lost.
  microlock run --ttl 60s --grace 5s jobs/migrate -- sh -c 'migrate --fence "$MICROLOCK_TOKEN"'

  # Wait at most a minute for the lock.
  microlock run --wait-timeout 1m jobs/reindex -- ./reindex

  # At most 4 encoders at once, across the fleet.
  microlock run --limit 4 jobs/encode -- ./encode next

  # Readers together, the writer alone.
  microlock run --shared db/catalog -- ./read-report
  microlock run db/catalog -- ./migrate-catalog

  # Let the node's Prometheus agent scrape the job's lock metrics.
  microlock run --metrics-addr 127.0.0.1:9464 jobs/nightly-report -- ./nightly-report.sh`,
		extra: `Exit codes:
  CMD's status  CMD ran and exited; 128+N when signal N killed it
  1             other error (etcd refused the request, unreadable TLS files, ...)
  64            usage error
  69            etcd unreachable or timed out
  75            KEY is locked by someone else (--no-wait, or --wait-timeout ran out)
  76            the lock was lost while CMD ran; CMD was terminated
  126           CMD cannot be executed
  127           CMD not found
  128+N         run was stopped by signal N while waiting for the lock`,
	}
}

// runFlags are run's own flags.
type runFlags struct {
	ttl         time.Duration
	nodeID      string
	noWait      bool
	waitTimeout time.Duration
	grace       time.Duration
	limit       int
	shared      bool
	metricsAddr string
}

func (c *cli) run(args []string) error {
	fs := newFlagSet("run")
	conn := addConnFlags(fs)
	f := addRunFlags(fs)
	p, err := c.parseOrHelp(fs, args, runHelp())
	if err != nil {
		return err
	}
	if err := f.check(fs, p); err != nil {
		return err
	}
	if err := conn.applyEnv(fs, c.getenv); err != nil {
		return err
	}

	// Look the command up before taking the lock: a typo should not cost
	// anyone a turn.
	cmd := exec.Command(p.rest[0], p.rest[1:]...)
	if cmd.Err == nil {
		_, cmd.Err = exec.LookPath(cmd.Path) // a path with a slash is not looked up above
	}
	if cmd.Err != nil {
		return startError(cmd.Err)
	}
	return c.runLocked(p.args[0], cmd, conn, *f)
}

// addRunFlags defines run's own flags in fs.
func addRunFlags(fs *pflag.FlagSet) *runFlags {
	f := &runFlags{ttl: microlock.DefaultTTL}
	fs.Var(durationFlag{&f.ttl}, "ttl", "lease `TTL`; etcd grants whole seconds, at least 1s")
	fs.StringVar(&f.nodeID, "node-id", "", "`ID` stored as the lock's value while held (default: hostname:pid)")
	fs.BoolVar(&f.noWait, "no-wait", false, "fail at once, with exit code 75, if someone else holds the lock")
	fs.Var(durationFlag{&f.waitTimeout}, "wait-timeout", "give up waiting for the lock after this `time` (default: wait as long as it takes)")
	fs.Var(durationFlag{&f.grace}, "grace", graceHelp())
	fs.IntVar(&f.limit, "limit", 1, "let at most `N` holders run at once: a counting semaphore, in arrival order (as consul lock -n)")
	fs.BoolVar(&f.shared, "shared", false, "take a shared (read) hold: shared holders run together, exclusive ones alone")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://`ADDR`/metrics while waiting and running (default: off)")
	return f
}

// check refuses a command line that run cannot carry out, and sets --grace
// to its default if it was not given.
func (f *runFlags) check(fs *pflag.FlagSet, p parsed) error {
	switch {
	case len(p.args) == 0:
		return usageErrorf("run: missing KEY")
	case !p.hasDash:
		return usageErrorf(`run: missing "--" between KEY and the command`)
	case len(p.args) > 1:
		return usageErrorf("run: one KEY expected before \"--\", got %d arguments: %q", len(p.args), p.args)
	case len(p.rest) == 0:
		return usageErrorf(`run: missing the command after "--"`)
	case p.args[0] == "":
		return usageErrorf("run: empty KEY")
	case f.ttl < microlock.MinTTL:
		return usageErrorf("run: --ttl %v is below the minimum of %v", f.ttl, microlock.MinTTL)
	case f.limit < 1:
		return usageErrorf("run: --limit %d is below 1", f.limit)
	case f.shared && fs.Changed("limit"):
		return usageErrorf("run: --limit and --shared cannot be combined")
	case f.noWait && fs.Changed("wait-timeout"):
		return usageErrorf("run: --wait-timeout has no use with --no-wait")
	}
	if !fs.Changed("grace") {
		f.grace = maxGrace(f.ttl)
		return nil
	}
	return checkGrace(f.grace, f.ttl)
}

// runLocked takes the lock key, runs cmd while holding it, and releases it.
// options are the lock's options that run's flags ask for.
func (f *runFlags) options() []microlock.Option {
	var opts []microlock.Option
	if f.nodeID != "" {
		opts = append(opts, microlock.WithNodeID(f.nodeID))
	}
	if f.limit > 1 {
		opts = append(opts, microlock.WithLimit(f.limit))
	}
	if f.shared {
		opts = append(opts, microlock.Shared())
	}
	return opts
}

func (c *cli) runLocked(key string, cmd *exec.Cmd, conn *connFlags, f runFlags) error {
	log := startEventLog(c.stderr)
	defer log.stop()
	opts := []microlock.Option{microlock.WithTTL(f.ttl), microlock.OnEvent(log.hook)}
	if f.metricsAddr != "" {
		ms, err := startMetrics(f.metricsAddr, c.stderr)
		if err != nil {
			return err
		}
		defer ms.stop() // after the Mutex is closed: its last events are in
		opts = append(opts, microlock.OnEvent(ms.metrics.Observe))
	}
	opts = append(opts, f.options()...)
	client, err := conn.client()
	if err != nil {
		return err
	}
	defer client.Close()
	m, err := microlock.New(client, key, opts...)
	if err != nil {
		return usageErrorf("run: %v", err)
	}
	defer m.Close()

	// One channel for the whole run: a signal that comes while the lock is
	// being taken cancels that; one that comes later goes to the command.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	if err := c.acquire(client, conn, m, f, sigs); err != nil {
		return err
	}
	token := m.Token()
	if token == 0 {
		// Lost between the acquisition and now.
		lost := m.Err()
		if lost == nil {
			lost = microlock.ErrLockLost
		}
		return &exitError{code: exitLost, err: lost}
	}
	cmd.Env = append(os.Environ(),
		"MICROLOCK_KEY="+key,
		"MICROLOCK_NODE_ID="+m.NodeID(),
		"MICROLOCK_TOKEN="+strconv.FormatInt(token, 10),
	)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	ch, err := startChild(cmd)
	if err != nil {
		c.release(m, conn)
		return startError(err)
	}
	status, lost := c.supervise(m, ch, sigs, f.grace)
	if lost != nil { // already reported, as it happened
		return &exitError{code: exitLost, err: fmt.Errorf("microlock: the command was stopped because the lock on %q was lost", key)}
	}
	c.release(m, conn)
	return &exitError{code: status}
}

// startError is a command that cannot be started, with the exit code a
// shell would give: 127 when it does not exist, 126 otherwise.
func startError(err error) error {
	code := exitCannotRun
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		code = exitNotFound
	}
	return &exitError{code: code, err: fmt.Errorf("microlock: run: %w", err)}
}

// acquire takes the lock: one attempt with --no-wait, otherwise in turn,
// for at most --wait-timeout. SIGINT and SIGTERM abort it.
func (c *cli) acquire(client *clientv3.Client, conn *connFlags, m *microlock.Mutex, f runFlags, sigs <-chan os.Signal) error {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	quit, relayDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(relayDone)
		select {
		case s := <-sigs:
			cancel(&interruptError{sig: s})
		case <-quit:
		}
	}()
	err := c.tryAcquire(ctx, client, conn, m, f)
	close(quit)
	<-relayDone
	if ie := interrupted(ctx); ie != nil {
		if err == nil {
			c.release(m, conn) // the signal won the race with the acquisition
		}
		return ie
	}
	return err
}

var errWaitTimeout = errors.New("microlock: --wait-timeout ran out")

func (c *cli) tryAcquire(ctx context.Context, client *clientv3.Client, conn *connFlags, m *microlock.Mutex, f runFlags) error {
	if f.noWait {
		tctx, cancel := context.WithTimeout(ctx, conn.commandTimeout)
		defer cancel()
		err := m.TryLock(tctx)
		if errors.Is(err, microlock.ErrLocked) {
			return &exitError{code: exitLocked, err: err}
		}
		if err != nil && ctx.Err() == nil {
			return etcdError(err)
		}
		return err
	}

	// Lock retries etcd errors for as long as it waits: check first that
	// etcd answers at all, so that a wrong endpoint fails fast.
	pctx, pcancel := context.WithTimeout(ctx, conn.commandTimeout)
	_, err := client.Get(pctx, m.Key()+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	pcancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return etcdError(fmt.Errorf("microlock: reaching etcd at %s: %w", conn.endpoints, err))
	}

	if f.waitTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, f.waitTimeout, errWaitTimeout)
		defer cancel()
	}
	err = m.Lock(ctx)
	switch {
	case err == nil:
		return nil
	case !errors.Is(context.Cause(ctx), errWaitTimeout):
		if ctx.Err() != nil {
			return err // interrupted: the caller says so
		}
		return etcdError(err)
	}
	// Out of time: say who has the lock, or that etcd could not be asked.
	qctx, qcancel := context.WithTimeout(context.Background(), conn.commandTimeout)
	defer qcancel()
	ev, qerr := microlock.Holder(qctx, client, m.Key())
	switch {
	case qerr != nil:
		return etcdError(fmt.Errorf("microlock: %q not acquired within --wait-timeout %v; etcd did not answer: %w", m.Key(), f.waitTimeout, qerr))
	case ev.Type == microlock.Locked:
		return &exitError{code: exitLocked, err: fmt.Errorf("microlock: %q is still locked by %s (token %d) after --wait-timeout %v",
			m.Key(), quoted([]byte(ev.Holder)), ev.Token, f.waitTimeout)}
	default:
		return &exitError{code: exitLocked, err: fmt.Errorf("microlock: %q not acquired within --wait-timeout %v", m.Key(), f.waitTimeout)}
	}
}

// supervise waits for the child while the lock is held, passing on SIGINT
// and SIGTERM. If the lock is lost first, it terminates the child's process
// group (SIGTERM now, SIGKILL after grace) and returns the loss. Otherwise it
// returns the child's exit status.
func (c *cli) supervise(m *microlock.Mutex, ch *child, sigs <-chan os.Signal, grace time.Duration) (status int, lost error) {
	for {
		select {
		case <-ch.exited:
			select {
			case <-m.Done():
				// Lost too, maybe before the child ended: treat it as lost,
				// and still stop whatever the child left in its group.
				return 0, c.terminate(m, ch, grace)
			default:
			}
			return ch.reap(), nil
		case s := <-sigs:
			ch.signal(s.(syscall.Signal))
		case <-m.Done():
			return 0, c.terminate(m, ch, grace)
		}
	}
}

// terminate sends SIGTERM to the child's process group at once and SIGKILL
// after grace, waits for the child and reaps it.
func (c *cli) terminate(m *microlock.Mutex, ch *child, grace time.Duration) error {
	ch.signal(syscall.SIGTERM)
	// Scheduled before anything that could block (a full stderr pipe, say).
	killed := make(chan struct{})
	time.AfterFunc(grace, func() {
		ch.signal(syscall.SIGKILL)
		close(killed)
	})
	lost := m.Err()
	if lost == nil {
		lost = microlock.ErrLockLost
	}
	fmt.Fprintf(c.stderr, "%v: sent SIGTERM to the command's process group, SIGKILL follows in %v\n", lost, grace)
	<-killed
	<-ch.exited
	ch.reap()
	return lost
}

// release unlocks, bounded by --command-timeout. A failure is reported but
// does not change the exit code: the command ran under the lock, and the
// lock expires with its lease.
func (c *cli) release(m *microlock.Mutex, conn *connFlags) {
	ctx, cancel := context.WithTimeout(context.Background(), conn.commandTimeout)
	defer cancel()
	if err := m.Unlock(ctx); err != nil {
		fmt.Fprintf(c.stderr, "microlock: releasing %q after the command ended: %v (the lock expires with its lease)\n", m.Key(), err)
	}
}
