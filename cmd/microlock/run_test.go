//go:build unix

package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// startRun starts `microlock run FLAGS... KEY -- child`.
func startRun(t *testing.T, marks string, spec childSpec, key string, flags ...string) *proc {
	t.Helper()
	child, env := spec.command(marks)
	args := append([]string{"run"}, flags...)
	args = append(args, key, "--")
	return start(t, env, append(args, child...)...)
}

// TestRunNeverOverlap: several `microlock run` on one key at once run their
// commands one after the other, never two at once, each with the lock's
// details in its environment and a larger token than the one before.
func TestRunNeverOverlap(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	const n = 3
	var procs []*proc
	for i := range n {
		id := fmt.Sprintf("r%d", i)
		procs = append(procs, startRun(t, marks, childSpec{id: id, hold: 300 * time.Millisecond}, key, endpointsFlag(), "--node-id", "node-"+id))
	}
	for _, p := range procs {
		p.expectExit(30*time.Second, 0)
	}
	ms := readMarks(t, marks)
	if len(ms) != 2*n {
		t.Fatalf("%d marks, want %d:\n%s", len(ms), 2*n, dumpMarks(ms))
	}
	var last int64
	seen := make(map[string]bool)
	for i := 0; i < len(ms); i += 2 {
		s, e := ms[i], ms[i+1]
		if s.kind != "start" || e.kind != "end" || s.id != e.id {
			t.Fatalf("commands overlapped: marks %d and %d are %v and %v:\n%s", i, i+1, s, e, dumpMarks(ms))
		}
		seen[s.id] = true
		if len(s.fields) != 3 || s.fields[0] != key || s.fields[1] != "node-"+s.id {
			t.Fatalf("%s's environment: MICROLOCK_KEY, MICROLOCK_NODE_ID, MICROLOCK_TOKEN = %q, want %q, %q and a token", s.id, s.fields, key, "node-"+s.id)
		}
		token, err := strconv.ParseInt(s.fields[2], 10, 64)
		if err != nil || token <= last {
			t.Fatalf("%s's MICROLOCK_TOKEN = %q, want a number above the last holder's %d", s.id, s.fields[2], last)
		}
		last = token
	}
	if len(seen) != n {
		t.Fatalf("not every command ran once:\n%s", dumpMarks(ms))
	}
	if got := keysUnder(t, shared.Client(t), key); got != 0 {
		t.Fatalf("%d keys left under %q", got, key)
	}
}

// TestRunSecondWaitsForFirst: a run that starts while another holds the
// lock starts its command only after the first one's command ended.
func TestRunSecondWaitsForFirst(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	first := startRun(t, marks, childSpec{id: "first", hold: 500 * time.Millisecond}, key, endpointsFlag())
	waitMark(t, marks, "start", "first", 20*time.Second)
	second := startRun(t, marks, childSpec{id: "second", hold: 10 * time.Millisecond}, key, endpointsFlag())
	first.expectExit(20*time.Second, 0)
	second.expectExit(20*time.Second, 0)
	ms := readMarks(t, marks)
	got := make([]string, len(ms))
	for i, m := range ms {
		got[i] = m.kind + " " + m.id
	}
	if want := "start first,end first,start second,end second"; strings.Join(got, ",") != want {
		t.Fatalf("marks %q, want %q", got, want)
	}
}

// TestRunLoss: the holder's connection to etcd is blackholed. Its command
// gets SIGTERM, and is dead (SIGKILLed after --grace if it ignores SIGTERM),
// before a second run, waiting on a healthy connection, starts its own
// command; the first run exits with 76, "lock lost".
func TestRunLoss(t *testing.T) {
	for _, mode := range []string{"exit", "ignore"} {
		t.Run("child-"+mode+"s-SIGTERM", func(t *testing.T) {
			t.Parallel()
			key, marks := testKey(t), marksFile(t)
			proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
			holder := startRun(t, marks, childSpec{id: "cut", tick: 5 * time.Millisecond, onSignal: mode}, key,
				"--endpoints", proxy.URL(), "--ttl", "2s", "--grace", "100ms", "--node-id", "cut-off")
			waitMark(t, marks, "start", "cut", 20*time.Second)
			next := startRun(t, marks, childSpec{id: "next", hold: 10 * time.Millisecond}, key, endpointsFlag(), "--node-id", "next")
			// Let the second run queue, and the holder renew once, then cut.
			time.Sleep(800 * time.Millisecond)
			proxy.Blackhole()
			cutAt := time.Now()

			holder.expectExit(20*time.Second, exitLost)
			next.expectExit(20*time.Second, 0)
			if msg := holder.stderr.String(); !strings.Contains(msg, "lost") || !strings.Contains(msg, "SIGTERM") {
				t.Fatalf("stderr of the cut-off run does not explain the loss:\n%s", msg)
			}

			ms := readMarks(t, marks)
			term, nextStart := find(ms, "sig", "cut"), find(ms, "start", "next")
			if term < 0 || nextStart < 0 {
				t.Fatalf("want a SIGTERM mark of the cut-off command and a start of the next:\n%s", dumpMarks(ms))
			}
			if ms[term].fields[0] != "TERM" || term > nextStart || !ms[term].at.Before(ms[nextStart].at) {
				t.Fatalf("the cut-off command did not get SIGTERM before the next command started:\n%s", dumpMarks(ms))
			}
			// The command is dead before the next one starts: its ticks,
			// every 5 ms while it lives, stop before that.
			lastTick := -1
			for i, m := range ms {
				if m.kind == "tick" && m.id == "cut" {
					lastTick = i
				}
			}
			if lastTick > nextStart || ms[lastTick].at.After(ms[nextStart].at) {
				t.Fatalf("the cut-off command was still running when the next one started (tick at %v, start at %v)",
					ms[lastTick].at.Format("15:04:05.000000"), ms[nextStart].at.Format("15:04:05.000000"))
			}
			if mode == "ignore" && find(ms, "end", "cut") >= 0 {
				t.Fatalf("the command that ignored SIGTERM ended by itself; want it killed:\n%s", dumpMarks(ms))
			}
			t.Logf("the cut-off run's stderr:\n%s", holder.stderr.String())
			t.Logf("cut→SIGTERM %v, cut→last tick %v, cut→next command %v",
				ms[term].at.Sub(cutAt).Round(time.Millisecond), ms[lastTick].at.Sub(cutAt).Round(time.Millisecond),
				ms[nextStart].at.Sub(cutAt).Round(time.Millisecond))
		})
	}
}

// TestRunNoWait: --no-wait on a held key exits with 75 at once, naming the
// holder, and does not run its command.
func TestRunNoWait(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	holder := startRun(t, marks, childSpec{id: "holder", onSignal: "exit"}, key, endpointsFlag(), "--node-id", "holder-a")
	waitMark(t, marks, "start", "holder", 20*time.Second)

	p := startRun(t, marks, childSpec{id: "nowait"}, key, endpointsFlag(), "--no-wait", "--node-id", "holder-b")
	p.expectExit(20*time.Second, exitLocked)
	if msg := p.stderr.String(); !strings.Contains(msg, `"holder-a"`) {
		t.Fatalf("--no-wait's message does not name the holder holder-a:\n%s", msg)
	}
	holder.signal(syscall.SIGTERM)
	holder.expectExit(20*time.Second, 0)
	if ms := readMarks(t, marks); find(ms, "start", "nowait") >= 0 {
		t.Fatalf("--no-wait ran its command although the key was held:\n%s", dumpMarks(ms))
	}
}

// TestRunWaitTimeout: --wait-timeout gives up with 75 and names the holder.
func TestRunWaitTimeout(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	holder := startRun(t, marks, childSpec{id: "holder", onSignal: "exit"}, key, endpointsFlag(), "--node-id", "slow-holder")
	waitMark(t, marks, "start", "holder", 20*time.Second)
	begin := time.Now()
	p := startRun(t, marks, childSpec{id: "waiter"}, key, endpointsFlag(), "--wait-timeout", "500ms")
	p.expectExit(20*time.Second, exitLocked)
	if d := time.Since(begin); d < 500*time.Millisecond {
		t.Fatalf("gave up after %v, before --wait-timeout", d)
	}
	if msg := p.stderr.String(); !strings.Contains(msg, `"slow-holder"`) || !strings.Contains(msg, "--wait-timeout") {
		t.Fatalf("message does not name the holder and the timeout:\n%s", msg)
	}
	holder.signal(syscall.SIGTERM)
	holder.expectExit(20*time.Second, 0)
	if got := keysUnder(t, shared.Client(t), key); got != 0 {
		t.Fatalf("%d keys left under %q: the waiter did not leave the queue", got, key)
	}
}

// TestRunSignals: SIGINT or SIGTERM sent to run reaches the command; the
// command dies of it, run exits with 128+N like a shell, and the lock is
// released: nothing is left under the key in etcd.
func TestRunSignals(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		name := map[syscall.Signal]string{syscall.SIGINT: "INT", syscall.SIGTERM: "TERM"}[sig]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			key, marks := testKey(t), marksFile(t)
			p := startRun(t, marks, childSpec{id: "child", onSignal: "die"}, key, endpointsFlag())
			waitMark(t, marks, "start", "child", 20*time.Second)
			cli := shared.Client(t)
			if got := keysUnder(t, cli, key); got != 1 {
				t.Fatalf("%d keys under %q while held, want 1", got, key)
			}
			p.signal(sig)
			p.expectExit(20*time.Second, 128+int(sig))
			ms := readMarks(t, marks)
			if i := find(ms, "sig", "child"); i < 0 || ms[i].fields[0] != name {
				t.Fatalf("the command did not get SIG%s:\n%s", name, dumpMarks(ms))
			}
			if got := keysUnder(t, cli, key); got != 0 {
				t.Fatalf("%d keys left under %q after run exited", got, key)
			}
		})
	}
}

// TestRunExitStatus: run exits with its command's status, and runs nothing,
// holds nothing, when the command cannot be started.
func TestRunExitStatus(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	p := startRun(t, marks, childSpec{id: "c", hold: time.Millisecond, exitCode: 3}, key, endpointsFlag())
	p.expectExit(20*time.Second, 3)

	code, _, stderr := runMicrolock(t, "run", endpointsFlag(), key, "--", "/nonexistent/command")
	if code != exitNotFound || !strings.Contains(stderr, "/nonexistent/command") {
		t.Fatalf("missing command: exit %d, stderr %q; want %d and the command's name", code, stderr, exitNotFound)
	}
	code, _, stderr = runMicrolock(t, "run", endpointsFlag(), key, "--", t.TempDir())
	if code != exitCannotRun {
		t.Fatalf("a directory as the command: exit %d, stderr %q; want %d", code, stderr, exitCannotRun)
	}
	if got := keysUnder(t, shared.Client(t), key); got != 0 {
		t.Fatalf("%d keys left under %q", got, key)
	}
}

// TestRunUnreachable: an etcd that does not answer gives 69 within
// --command-timeout, not a wait without end.
func TestRunUnreachable(t *testing.T) {
	t.Parallel()
	proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
	proxy.Blackhole()
	for _, extra := range [][]string{nil, {"--no-wait"}} {
		begin := time.Now()
		args := append([]string{"run", "--endpoints", proxy.URL(), "--command-timeout", "1s"}, extra...)
		code, _, stderr := runMicrolock(t, append(args, testKey(t), "--", "true")...)
		if code != exitUnavailable {
			t.Fatalf("%q: exit %d, want %d; stderr:\n%s", args, code, exitUnavailable, stderr)
		}
		if d := time.Since(begin); d > 15*time.Second {
			t.Fatalf("%q took %v to give up", args, d)
		}
	}
}

// TestRunAgainstLibrary: run and the library exclude each other on one key.
func TestRunAgainstLibrary(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	m, err := microlock.New(shared.Client(t), key, microlock.WithNodeID("library"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Lock(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runMicrolock(t, "run", endpointsFlag(), "--no-wait", key, "--", "true")
	if code != exitLocked || !strings.Contains(stderr, `"library"`) {
		t.Fatalf("run --no-wait on a key the library holds: exit %d, stderr %q", code, stderr)
	}
	p := startRun(t, marks, childSpec{id: "after", hold: time.Millisecond}, key, endpointsFlag())
	time.Sleep(300 * time.Millisecond)
	if ms := readMarks(t, marks); len(ms) != 0 {
		t.Fatalf("run's command started while the library held the lock:\n%s", dumpMarks(ms))
	}
	if err := m.Unlock(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.expectExit(20*time.Second, 0)
}
