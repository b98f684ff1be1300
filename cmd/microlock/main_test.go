//go:build unix

package main

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

	"github.com/microlock/microlock/internal/etcdtest"
	"github.com/microlock/microlock/internal/testkit"
)

// The tests run the real microlock binary, built once in TestMain (with the
// race detector when the tests have it), against real etcd processes. The
// commands that `microlock run` runs are this test binary again, in child
// mode (see child_test.go), so that they can record what happens to them.

var (
	shared       *etcdtest.Cluster // a single-node etcd for the tests that do not break theirs
	microlockBin string
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "microlock-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer os.RemoveAll(dir)
	microlockBin = filepath.Join(dir, "microlock")
	args := []string{"build", "-o", microlockBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building microlock: %v\n%s", err, out)
		return 2
	}
	return testkit.Main(m, func(c *etcdtest.Cluster) { shared = c })
}

// lockedBuffer is a bytes.Buffer that a process's output goroutine writes
// while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// proc is a running microlock process.
type proc struct {
	t      *testing.T
	args   []string
	cmd    *exec.Cmd
	stdout lockedBuffer
	stderr lockedBuffer
	done   chan struct{}
}

// start runs microlock with args and the environment of the test plus env.
// The process is killed at the end of the test if it is still running.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	return startIn(t, "", env, args...)
}

// startIn is start in the working directory dir.
func startIn(t *testing.T, dir string, env []string, args ...string) *proc {
	t.Helper()
	return startWith(t, dir, nil, env, args...)
}

// startWith is startIn with stdin as the process's standard input (nil:
// /dev/null).
func startWith(t *testing.T, dir string, stdin *os.File, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, args: args, done: make(chan struct{})}
	p.cmd = exec.Command(microlockBin, args...)
	p.cmd.Dir = dir
	if stdin != nil {
		p.cmd.Stdin = stdin
	}
	p.cmd.Env = append(cleanEnv(), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		_ = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		p.checkRace()
	})
	return p
}

// cleanEnv is the test's environment without the variables that would
// change microlock's behaviour behind the test's back, and with the race
// detector's one-second pause at exit turned off.
func cleanEnv() []string {
	gorace := "atexit_sleep_ms=0"
	var env []string
	for _, kv := range os.Environ() {
		switch {
		case strings.HasPrefix(kv, "ETCDCTL_"), strings.HasPrefix(kv, "MICROLOCK_"):
		case strings.HasPrefix(kv, "GORACE="):
			gorace = strings.TrimPrefix(kv, "GORACE=") + " " + gorace
		default:
			env = append(env, kv)
		}
	}
	return append(env, "GORACE="+gorace)
}

// wait waits up to d for the process to exit and returns its exit code.
func (p *proc) wait(d time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		p.t.Fatalf("microlock %q still running after %v\nstdout:\n%s\nstderr:\n%s", p.args, d, p.stdout.String(), p.stderr.String())
	}
	p.checkRace()
	ws := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		p.t.Fatalf("microlock %q killed by %v\nstderr:\n%s", p.args, ws.Signal(), p.stderr.String())
	}
	return ws.ExitStatus()
}

// expectExit waits for the process and fails the test unless it exits with
// want.
func (p *proc) expectExit(d time.Duration, want int) {
	p.t.Helper()
	if got := p.wait(d); got != want {
		p.t.Fatalf("microlock %q exited with %d, want %d\nstdout:\n%s\nstderr:\n%s", p.args, got, want, p.stdout.String(), p.stderr.String())
	}
}

func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

func (p *proc) checkRace() {
	if strings.Contains(p.stderr.String(), "WARNING: DATA RACE") {
		p.t.Errorf("microlock %q had a data race:\n%s", p.args, p.stderr.String())
	}
}

// runMicrolock runs microlock to completion and returns its exit code and
// output.
func runMicrolock(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	p := start(t, nil, args...)
	code = p.wait(30 * time.Second)
	return code, p.stdout.String(), p.stderr.String()
}

func endpointsFlag() string { return "--endpoints=" + strings.Join(shared.Endpoints(), ",") }

// testKey returns a lock key unique to the test.
func testKey(t *testing.T) string { return "cmdtest/" + t.Name() }

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// keysUnder returns how many keys etcd has under key's lock prefix.
func keysUnder(t *testing.T, c *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := c.Get(ctxTimeout(t, 5*time.Second), key+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// eventually polls f every 20 ms until it returns nil or d has passed.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %v after %v", what, err, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")
