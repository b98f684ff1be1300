package microlock_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sync/errgroup"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// A lockKind is one implementation of etcd's lock layout. start begins to
// take the lock on key, waiting as long as it must; release ends the hold
// and waits until it has.
type lockKind struct {
	name  string
	impl  string // kinds with the same impl share their code
	start func(t *testing.T, key string) (a *attempt, release func())
}

func lockKinds() []lockKind {
	return []lockKind{
		{"microlock", "microlock", startMicrolock},
		{"concurrency.Mutex", "concurrency", startConcurrencyMutex},
		{"etcdctl lock", "etcdctl", startEtcdctlLock},
		{"etcdctl lock -- CMD", "etcdctl", startEtcdctlExec},
	}
}

// attempt is a lock attempt under way: done is closed when it holds the
// lock or has failed, with err.
type attempt struct {
	done chan struct{}
	err  error
}

func newAttempt() *attempt { return &attempt{done: make(chan struct{})} }

func (a *attempt) finish(err error) {
	a.err = err
	close(a.done)
}

var errNotYet = errors.New("not acquired yet")

// wait waits up to d for the attempt to hold the lock.
func (a *attempt) wait(d time.Duration) error {
	select {
	case <-a.done:
		return a.err
	case <-time.After(d):
		return errNotYet
	}
}

func startMicrolock(t *testing.T, key string) (*attempt, func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	m := newMutex(t, client(t), key, microlock.WithNodeID("microlock-node"))
	a := newAttempt()
	go func() { a.finish(m.Lock(ctx)) }()
	t.Cleanup(func() { cancel(); <-a.done })
	return a, func() {
		if err := m.Unlock(ctx); err != nil {
			t.Errorf("microlock Unlock: %v", err)
		}
	}
}

func startConcurrencyMutex(t *testing.T, key string) (*attempt, func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	s, err := concurrency.NewSession(client(t), concurrency.WithTTL(5))
	if err != nil {
		t.Fatal(err)
	}
	m := concurrency.NewMutex(s, key)
	a := newAttempt()
	go func() { a.finish(m.Lock(ctx)) }()
	t.Cleanup(func() { cancel(); <-a.done; _ = s.Close() })
	return a, func() {
		if err := m.Unlock(ctx); err != nil {
			t.Errorf("concurrency.Mutex Unlock: %v", err)
		}
	}
}

// startEtcdctlLock runs `etcdctl lock KEY`, which prints the name of its key
// once it holds the lock and holds it until SIGTERM.
func startEtcdctlLock(t *testing.T, key string) (*attempt, func()) {
	p := startEtcdctl(t, "lock", key)
	return p.acquired, func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		p.wait(t)
	}
}

// startEtcdctlExec runs `etcdctl lock KEY -- CMD`, where CMD prints the
// lock's key from its environment and then runs until a file appears.
func startEtcdctlExec(t *testing.T, key string) (*attempt, func()) {
	flag := filepath.Join(t.TempDir(), "release")
	p := startEtcdctl(t, "lock", key, "--", "sh", "-c",
		`echo "$ETCD_LOCK_KEY"; while [ ! -e "$1" ]; do sleep 0.02; done`, "sh", flag)
	return p.acquired, func() {
		if err := os.WriteFile(flag, nil, 0o600); err != nil {
			t.Error(err)
		}
		p.wait(t)
	}
}

// ctlProc is a running etcdctl, waited for by its own goroutine and killed
// at the end of the test if it is still running.
type ctlProc struct {
	cmd      *exec.Cmd
	out      *firstLine
	stderr   bytes.Buffer
	acquired *attempt
	exited   chan struct{}
	err      error // set before exited is closed
}

func startEtcdctl(t *testing.T, args ...string) *ctlProc {
	t.Helper()
	bin, err := etcdtest.EtcdctlBinary()
	if err != nil {
		t.Fatal(err)
	}
	p := &ctlProc{
		out:      &firstLine{seen: make(chan struct{})},
		acquired: newAttempt(),
		exited:   make(chan struct{}),
	}
	args = append([]string{"--endpoints", strings.Join(shared.Endpoints(), ","), "--dial-timeout", "5s"}, args...)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	go func() {
		select {
		case <-p.out.seen:
			p.acquired.finish(nil)
		case <-p.exited:
			p.acquired.finish(fmt.Errorf("etcdctl exited before it held the lock: %v: %s", p.err, p.stderr.String()))
		}
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		<-p.acquired.done
	})
	return p
}

// wait waits for etcdctl to exit after a release, which must succeed.
func (p *ctlProc) wait(t *testing.T) {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("etcdctl did not exit within 10 s of its release")
	}
	if p.err != nil {
		t.Errorf("etcdctl: %v: %s", p.err, p.stderr.String())
	}
}

// firstLine is an io.Writer that closes seen at the first newline.
type firstLine struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	seen chan struct{}
	done bool
}

func (w *firstLine) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(b)
	if !w.done && bytes.IndexByte(w.buf.Bytes(), '\n') >= 0 {
		w.done = true
		close(w.seen)
	}
	return len(b), nil
}

// holderOf returns the first key of key's queue: who holds the lock.
func holderOf(t *testing.T, c *clientv3.Client, key string) (holder string, token int64) {
	t.Helper()
	resp, err := c.Get(ctxTimeout(t, 5*time.Second), key+"/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("reading the holder of %q: %v, %v", key, resp, err)
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].CreateRevision
}

// TestInteropEtcdctl: microlock, etcd's concurrency.Mutex and real etcdctl
// processes (`etcdctl lock KEY` and `etcdctl lock KEY -- CMD`) exclude each
// other on one key in every pair and direction: the second waits while the
// first holds and takes the lock when it is released. A microlock Watch
// reports each holder with the token etcd gave it, and a microlock TryLock
// names it.
func TestInteropEtcdctl(t *testing.T) {
	c := client(t)
	for _, first := range lockKinds() {
		for _, second := range lockKinds() {
			if first.impl == second.impl {
				continue
			}
			t.Run(first.name+" then "+second.name, func(t *testing.T) {
				t.Parallel()
				key := testKey(t)
				ctx := ctxTimeout(t, 30*time.Second)
				events := watchKey(t, c, key)
				expectEvent(t, events, microlock.Unlocked, "", 0)

				a1, release1 := first.start(t, key)
				if err := a1.wait(10 * time.Second); err != nil {
					t.Fatalf("%s: %v", first.name, err)
				}
				holder, token := holderOf(t, c, key)
				expectEvent(t, events, microlock.Locked, holder, token)
				probe := newMutex(t, c, key)
				var ale *microlock.AlreadyLockedError
				if err := probe.TryLock(ctx); !errors.As(err, &ale) || ale.Token != token || ale.Holder != holder {
					t.Fatalf("microlock TryLock while %s holds = %v, want *AlreadyLockedError with token %d", first.name, err, token)
				}

				a2, release2 := second.start(t, key)
				if err := a2.wait(500 * time.Millisecond); err != errNotYet {
					t.Fatalf("%s while %s held the lock: %v, want it to wait", second.name, first.name, err)
				}
				release1()
				if err := a2.wait(10 * time.Second); err != nil {
					t.Fatalf("%s after %s released: %v", second.name, first.name, err)
				}
				holder2, token2 := holderOf(t, c, key)
				if token2 <= token {
					t.Fatalf("second holder's token %d, not above the first's %d", token2, token)
				}
				expectEvent(t, events, microlock.Locked, holder2, token2)
				release2()
				expectEvent(t, events, microlock.Unlocked, "", 0)
				if keys := keysUnder(t, c, key); len(keys) != 0 {
					t.Fatalf("keys left: %q", keys)
				}
			})
		}
	}
}

// TestInteropEtcdctlContention: microlock WithLock loops, concurrency.Mutex
// loops and `etcdctl lock KEY -- CMD` processes contend for one key at once.
// Each critical section appends a start and an end mark to one file, the
// etcdctl ones from the shell; the marks never interleave.
func TestInteropEtcdctlContention(t *testing.T) {
	bin, err := etcdtest.EtcdctlBinary()
	if err != nil {
		t.Fatal(err)
	}
	c := client(t)
	key := testKey(t)
	ctx := ctxTimeout(t, 60*time.Second)
	marks := filepath.Join(t.TempDir(), "marks")
	mark := func(who string) error {
		f, err := os.OpenFile(marks, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := fmt.Fprintf(f, "start %s\n", who); err != nil {
			return err
		}
		time.Sleep(20 * time.Millisecond)
		_, err = fmt.Fprintf(f, "end %s\n", who)
		return err
	}
	const rounds = 3
	var eg errgroup.Group
	for i := range 2 {
		eg.Go(func() error {
			who := fmt.Sprintf("microlock-%d", i)
			for range rounds {
				if err := microlock.WithLock(ctx, c, key, func(context.Context) error { return mark(who) }); err != nil {
					return fmt.Errorf("%s: %w", who, err)
				}
			}
			return nil
		})
		eg.Go(func() error {
			who := fmt.Sprintf("mutex-%d", i)
			if err := etcdMutexRounds(ctx, c, key, rounds, func() error { return mark(who) }); err != nil {
				return fmt.Errorf("%s: %w", who, err)
			}
			return nil
		})
		eg.Go(func() error {
			who := fmt.Sprintf("etcdctl-%d", i)
			for range rounds {
				cmd := exec.CommandContext(ctx, bin, "--endpoints", strings.Join(shared.Endpoints(), ","),
					"lock", key, "--", "sh", "-c", `echo "start $2" >> "$1"; sleep 0.02; echo "end $2" >> "$1"`, "sh", marks, who)
				if out, err := cmd.CombinedOutput(); err != nil {
					return fmt.Errorf("%s: %w: %s", who, err, out)
				}
			}
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		t.Fatal(err)
	}
	checkMarks(t, marks, 2*3*rounds)
	if keys := keysUnder(t, c, key); len(keys) != 0 {
		t.Fatalf("keys left: %q", keys)
	}
}

// etcdMutexRounds takes key with etcd's concurrency.Mutex, on a session of
// its own, and runs work under it, rounds times.
func etcdMutexRounds(ctx context.Context, c *clientv3.Client, key string, rounds int, work func() error) error {
	s, err := concurrency.NewSession(c, concurrency.WithTTL(5))
	if err != nil {
		return err
	}
	defer s.Close()
	m := concurrency.NewMutex(s, key)
	for range rounds {
		if err := m.Lock(ctx); err != nil {
			return err
		}
		err := work()
		if uerr := m.Unlock(ctx); err == nil {
			err = uerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// checkMarks checks that the file marks holds n critical sections, each a
// start mark followed by its own end mark.
func checkMarks(t *testing.T, marks string, n int) {
	t.Helper()
	b, err := os.ReadFile(marks)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 2*n {
		t.Fatalf("%d marks, want %d:\n%s", len(lines), 2*n, b)
	}
	for i := 0; i < len(lines); i += 2 {
		who, ok := strings.CutPrefix(lines[i], "start ")
		if !ok || lines[i+1] != "end "+who {
			t.Fatalf("critical sections overlap at marks %d-%d:\n%s", i+1, i+2, b)
		}
	}
}
