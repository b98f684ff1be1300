//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/microlock/microlock"
	"github.com/microlock/microlock/internal/etcdtest"
)

// startElect starts `microlock elect FLAGS... KEY -- child`.
func startElect(t *testing.T, marks string, spec childSpec, key string, flags ...string) *proc {
	t.Helper()
	child, env := spec.command(marks)
	args := append([]string{"elect"}, flags...)
	args = append(args, key, "--")
	return start(t, env, append(args, child...)...)
}

// TestElectTakeover: the leader is cut off from etcd; its command gets
// SIGTERM before the next leader's command starts, with a higher term, and
// the cut-off node campaigns again.
func TestElectTakeover(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
	a := startElect(t, marks, childSpec{id: "a", tick: 5 * time.Millisecond, onSignal: "exit"}, key,
		"--endpoints", proxy.URL(), "--ttl", "2s", "--grace", "100ms", "--node-id", "node-a")
	first := waitMark(t, marks, "start", "a", 20*time.Second)
	b := startElect(t, marks, childSpec{id: "b", onSignal: "exit"}, key, endpointsFlag(), "--node-id", "node-b")
	cli := shared.Client(t)
	eventually(t, 10*time.Second, "b queued", func() error {
		if keysUnder(t, cli, key) < 2 {
			return errNotYet
		}
		return nil
	})
	proxy.Blackhole()
	next := waitMark(t, marks, "start", "b", 20*time.Second)

	ms := readMarks(t, marks)
	sig, nextStart := find(ms, "sig", "a"), find(ms, "start", "b")
	if sig < 0 || sig > nextStart || !ms[sig].at.Before(ms[nextStart].at) {
		t.Fatalf("the cut-off leader's command did not get SIGTERM before the next leader's started:\n%s", dumpMarks(ms))
	}
	tokA, _ := strconv.ParseInt(first.fields[2], 10, 64)
	tokB, _ := strconv.ParseInt(next.fields[2], 10, 64)
	if tokB <= tokA || next.fields[1] != "node-b" {
		t.Fatalf("next leader's term %d (node %s), want above %d by node-b", tokB, next.fields[1], tokA)
	}
	eventually(t, 20*time.Second, "the cut-off node campaigning again", func() error {
		if !strings.Contains(a.stderr.String(), "campaigning again") {
			return errNotYet
		}
		return nil
	})
	starts := 0
	for _, m := range readMarks(t, marks) {
		if m.kind == "start" && m.id == "a" {
			starts++
		}
	}
	if starts != 1 {
		t.Fatalf("the cut-off node led %d times; want once:\n%s", starts, dumpMarks(readMarks(t, marks)))
	}
	// a campaigns, cut off: a signal stops it as one that came while waiting.
	a.signal(syscall.SIGTERM)
	a.expectExit(20*time.Second, 128+int(syscall.SIGTERM))
	// b leads: the signal goes to its command, which exits 0.
	b.signal(syscall.SIGTERM)
	b.expectExit(20*time.Second, 0)
	if got := keysUnder(t, cli, key); got != 0 {
		t.Fatalf("%d keys left under %q", got, key)
	}
}

// TestElectTerms: without --once, elect runs its command again for every
// term, each with a higher token; --once exits with the command's status.
func TestElectTerms(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	p := startElect(t, marks, childSpec{id: "loop", hold: 20 * time.Millisecond, onSignal: "exit"}, key, endpointsFlag())
	eventually(t, 20*time.Second, "three terms", func() error {
		n := 0
		for _, m := range readMarks(t, marks) {
			if m.kind == "start" {
				n++
			}
		}
		if n < 3 {
			return errNotYet
		}
		return nil
	})
	p.signal(syscall.SIGTERM)
	if code := p.wait(20 * time.Second); code != 0 && code != 128+int(syscall.SIGTERM) {
		t.Fatalf("elect after SIGTERM: exit %d, want 0 (during a term) or %d (between terms)", code, 128+int(syscall.SIGTERM))
	}
	var last int64
	for _, m := range readMarks(t, marks) {
		if m.kind != "start" {
			continue
		}
		tok, err := strconv.ParseInt(m.fields[2], 10, 64)
		if err != nil || tok <= last {
			t.Fatalf("term tokens not increasing:\n%s", dumpMarks(readMarks(t, marks)))
		}
		last = tok
	}
	if got := keysUnder(t, shared.Client(t), key); got != 0 {
		t.Fatalf("%d keys left under %q", got, key)
	}

	once := startElect(t, marks, childSpec{id: "once", hold: 10 * time.Millisecond, exitCode: 3}, key, endpointsFlag(), "--once")
	once.expectExit(20*time.Second, 3)
	if got := keysUnder(t, shared.Client(t), key); got != 0 {
		t.Fatalf("%d keys left under %q after --once", got, key)
	}
}

// TestElectOnceLost: with --once, a lost term exits with 76.
func TestElectOnceLost(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	proxy := etcdtest.NewProxy(t, shared.Endpoints()[0])
	p := startElect(t, marks, childSpec{id: "c", onSignal: "exit"}, key,
		"--endpoints", proxy.URL(), "--ttl", "2s", "--grace", "100ms", "--once")
	waitMark(t, marks, "start", "c", 20*time.Second)
	proxy.Blackhole()
	p.expectExit(20*time.Second, exitLost)
	if i := find(readMarks(t, marks), "sig", "c"); i < 0 {
		t.Fatalf("the command was not signalled:\n%s", dumpMarks(readMarks(t, marks)))
	}
}

// TestElectListen: --listen prints the current leader, each change of
// leader or of its value, and "no leader"; --json the same as objects.
func TestElectListen(t *testing.T) {
	for _, asJSON := range []bool{false, true} {
		t.Run(map[bool]string{false: "text", true: "json"}[asJSON], func(t *testing.T) {
			t.Parallel()
			key := testKey(t)
			args := []string{"elect", "--listen", endpointsFlag(), key}
			if asJSON {
				args = append(args, "--json")
			}
			p := start(t, nil, args...)
			lines := func() []string {
				return strings.Split(strings.TrimSuffix(p.stdout.String(), "\n"), "\n")
			}
			waitLines := func(n int) []string {
				t.Helper()
				eventually(t, 20*time.Second, "elect --listen output", func() error {
					if p.stdout.String() == "" || len(lines()) < n {
						return errNotYet
					}
					return nil
				})
				return lines()
			}
			ctx := ctxTimeout(t, 30*time.Second)
			waitLines(1)
			m, err := microlock.New(shared.Client(t), key, microlock.WithNodeID("leader-1"))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if err := m.Lock(ctx); err != nil {
				t.Fatal(err)
			}
			waitLines(2)
			if err := m.Proclaim(ctx, "leader-1 at :8080"); err != nil {
				t.Fatal(err)
			}
			waitLines(3)
			if err := m.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
			got := waitLines(4)
			p.signal(syscall.SIGTERM)
			p.expectExit(20*time.Second, 0)
			want := []leaderJSON{
				{Event: "no leader"},
				{Event: "leader", Leader: "leader-1", Term: m.Token()},
				{Event: "leader", Leader: "leader-1 at :8080"},
				{Event: "no leader"},
			}
			for i, line := range got {
				var l leaderJSON
				if asJSON {
					if err := json.Unmarshal([]byte(line), &l); err != nil || l.Key != key {
						t.Fatalf("line %d %q: %v", i, line, err)
					}
				} else {
					l = parseLeaderLine(t, line)
				}
				if i == 1 {
					want[1].Term, want[2].Term = l.Term, l.Term
				}
				if l.Event != want[i].Event || l.Leader != want[i].Leader || l.Term != want[i].Term || (l.Event == "leader") != (l.Term > 0) {
					t.Fatalf("line %d: %q, want %+v (all:\n%s)", i, line, want[i], strings.Join(got, "\n"))
				}
			}
		})
	}
}

// parseLeaderLine reads a text line of elect --listen.
func parseLeaderLine(t *testing.T, line string) leaderJSON {
	t.Helper()
	f := strings.Fields(line)
	switch {
	case len(f) == 4 && f[1] == "no" && f[2] == "leader":
		return leaderJSON{Event: "no leader"}
	case len(f) >= 6 && f[1] == "leader" && f[len(f)-2] == "term":
		quotedLeader := strings.Join(f[3:len(f)-2], " ")
		leader, err := strconv.Unquote(quotedLeader)
		term, terr := strconv.ParseInt(f[len(f)-1], 10, 64)
		if err != nil || terr != nil {
			t.Fatalf("bad line %q", line)
		}
		return leaderJSON{Event: "leader", Leader: leader, Term: term}
	}
	t.Fatalf("bad line %q", line)
	return leaderJSON{}
}

// TestElectUsage: bad command lines of elect get exit code 64 and say why.
func TestElectUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"elect"}, "missing KEY"},
		{[]string{"elect", "k"}, `missing "--"`},
		{[]string{"elect", "k", "--"}, "missing the command"},
		{[]string{"elect", "--listen"}, "missing KEY"},
		{[]string{"elect", "--listen", "--once", "k"}, "--once has no use with --listen"},
		{[]string{"elect", "--listen", "k", "--", "true"}, "no command"},
		{[]string{"elect", "--json", "k", "--", "true"}, "--json has use only with --listen"},
		{[]string{"elect", "--ttl", "2s", "--grace", "200ms", "k", "--", "true"}, "at most 150ms"},
		{[]string{"elect", "--node-id", " ", "k", "--", "true"}, "empty node ID"},
	} {
		code, stdout, stderr := runMicrolock(t, tc.args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) || stdout != "" {
			t.Errorf("microlock %q: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, exitUsage, tc.want)
		}
	}
	code, _, stderr := runMicrolock(t, "elect", endpointsFlag(), "k", "--", "/nonexistent/command")
	if code != exitNotFound {
		t.Fatalf("missing command: exit %d, stderr %q; want %d", code, stderr, exitNotFound)
	}
}

// TestWatchElection: `microlock watch` sees an etcdctl elect leader, then an
// etcd Election leader and its Proclaim, each with its token.
func TestWatchElection(t *testing.T) {
	t.Parallel()
	key := testKey(t)
	ctx := ctxTimeout(t, 30*time.Second)
	cli := shared.Client(t)
	w := startWatch(t, endpointsFlag(), key)
	expectLine := func(want string) {
		t.Helper()
		if line := w.next(); !strings.HasSuffix(line, want) {
			t.Fatalf("watch printed %q, want it to end with %q", line, want)
		}
	}
	expectLine(fmt.Sprintf("unlocked  %q", key))

	bin, err := etcdtest.EtcdctlBinary()
	if err != nil {
		t.Fatal(err)
	}
	ctl := exec.Command(bin, "--endpoints", strings.Join(shared.Endpoints(), ","), "elect", key, "ctl-leader")
	if err := ctl.Start(); err != nil {
		t.Fatal(err)
	}
	ctlDone := make(chan error, 1)
	go func() { ctlDone <- ctl.Wait() }()
	t.Cleanup(func() { _ = ctl.Process.Kill(); <-ctlDone })
	observer := concurrency.NewElection(newSession(t, cli), key)
	var tok1 int64
	eventually(t, 10*time.Second, "etcdctl elect leading", func() error {
		resp, err := observer.Leader(ctx)
		if err != nil || string(resp.Kvs[0].Value) != "ctl-leader" {
			return errNotYet
		}
		tok1 = resp.Kvs[0].CreateRevision
		return nil
	})
	expectLine(fmt.Sprintf("holder %q  token %d", "ctl-leader", tok1))

	e := concurrency.NewElection(newSession(t, cli), key)
	elected := make(chan error, 1)
	go func() { elected <- e.Campaign(ctx, "etcd-leader") }()
	eventually(t, 10*time.Second, "the Election candidate in line", func() error {
		if keysUnder(t, cli, key) < 2 {
			return errNotYet
		}
		return nil
	})
	_ = ctl.Process.Signal(syscall.SIGTERM) // etcdctl elect resigns
	if err := <-elected; err != nil {
		t.Fatal(err)
	}
	expectLine(fmt.Sprintf("holder %q  token %d", "etcd-leader", e.Rev()))
	if e.Rev() <= tok1 {
		t.Fatalf("second leader's token %d, not above %d", e.Rev(), tok1)
	}
	if err := e.Proclaim(ctx, "etcd-leader v2"); err != nil {
		t.Fatal(err)
	}
	expectLine(fmt.Sprintf("holder %q  token %d", "etcd-leader v2", e.Rev()))
	if err := e.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	expectLine(fmt.Sprintf("unlocked  %q", key))
	w.stop()
}

// newSession is a concurrency session closed at the end of the test.
func newSession(t *testing.T, cli *clientv3.Client) *concurrency.Session {
	t.Helper()
	s, err := concurrency.NewSession(cli)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}
