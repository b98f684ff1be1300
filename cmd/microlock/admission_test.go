//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/microlock/microlock"
)

// maxOverlap returns the most commands whose start and end marks overlap,
// and whether any of ids overlapped with another command.
func maxOverlap(ms []mark, alone map[string]bool) (most int, aloneBroken bool) {
	running := map[string]bool{}
	for _, m := range ms {
		switch m.kind {
		case "start":
			running[m.id] = true
			most = max(most, len(running))
			for id := range running {
				if len(running) > 1 && alone[id] {
					aloneBroken = true
				}
			}
		case "end":
			delete(running, m.id)
		}
	}
	return most, aloneBroken
}

// TestRunLimit: `run --limit 2` lets two commands run at once, never three,
// and every run ends with its command's status and no key left.
func TestRunLimit(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	var procs []*proc
	for i := range 5 {
		id := fmt.Sprintf("s%d", i)
		procs = append(procs, startRun(t, marks, childSpec{id: id, hold: 400 * time.Millisecond}, key,
			endpointsFlag(), "--limit", "2", "--node-id", "node-"+id))
	}
	for _, p := range procs {
		p.expectExit(60*time.Second, 0)
	}
	ms := readMarks(t, marks)
	if len(ms) != 10 {
		t.Fatalf("%d marks, want 10:\n%s", len(ms), dumpMarks(ms))
	}
	if most, _ := maxOverlap(ms, nil); most > 2 {
		t.Fatalf("%d commands ran at once under --limit 2:\n%s", most, dumpMarks(ms))
	}
	if got := keysUnder(t, shared.Client(t), key); got != 0 {
		t.Fatalf("%d keys left under %q", got, key)
	}
}

// TestRunShared: `run --shared` commands may run together, an exclusive
// run never runs with any other.
func TestRunShared(t *testing.T) {
	t.Parallel()
	key, marks := testKey(t), marksFile(t)
	var procs []*proc
	for i := range 5 {
		id := fmt.Sprintf("r%d", i)
		flags := []string{endpointsFlag(), "--node-id", "node-" + id}
		if i != 2 {
			flags = append(flags, "--shared")
		} else {
			id = "writer"
		}
		procs = append(procs, startRun(t, marks, childSpec{id: id, hold: 300 * time.Millisecond}, key, flags...))
	}
	for _, p := range procs {
		p.expectExit(60*time.Second, 0)
	}
	ms := readMarks(t, marks)
	if len(ms) != 10 {
		t.Fatalf("%d marks, want 10:\n%s", len(ms), dumpMarks(ms))
	}
	if _, broken := maxOverlap(ms, map[string]bool{"writer": true}); broken {
		t.Fatalf("the exclusive run overlapped a shared one:\n%s", dumpMarks(ms))
	}
}

// TestRunAdmissionRefused: bad --limit and --shared flags are usage errors;
// a run whose limit disagrees with the key's holders is refused, exit 1,
// without running its command.
func TestRunAdmissionRefused(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--limit", "0"}, {"--limit", "-2"}, {"--limit", "2", "--shared"}, {"--limit", "x"}} {
		code, _, stderr := runMicrolock(t, append(append([]string{"run", endpointsFlag()}, args...), "k", "--", "true")...)
		if code != exitUsage || !strings.HasPrefix(stderr, "microlock: ") {
			t.Errorf("run %v: exit %d, stderr %q; want %d", args, code, stderr, exitUsage)
		}
	}
	key, marks := testKey(t), marksFile(t)
	holder := startRun(t, marks, childSpec{id: "holder", onSignal: "exit"}, key, endpointsFlag(), "--limit", "2")
	waitMark(t, marks, "start", "holder", 20*time.Second)
	for _, args := range [][]string{{"--limit", "3"}, {"--limit", "3", "--no-wait"}, {"--shared"}, {}} {
		p := startRun(t, marks, childSpec{id: "refused"}, key, append([]string{endpointsFlag()}, args...)...)
		p.expectExit(20*time.Second, exitFailure)
		if msg := p.stderr.String(); !strings.Contains(msg, "another admission rule") {
			t.Fatalf("run %v on a semaphore of limit 2: %s", args, msg)
		}
	}
	holder.signal(syscall.SIGTERM)
	holder.expectExit(20*time.Second, 0)
	if ms := readMarks(t, marks); find(ms, "start", "refused") >= 0 {
		t.Fatalf("a refused run ran its command:\n%s", dumpMarks(ms))
	}
}

// TestHolderAndWatchCountHolders: holder and watch list every holder of a
// semaphore, with their count.
func TestHolderAndWatchCountHolders(t *testing.T) {
	t.Parallel()
	key := testKey(t)
	c := shared.Client(t)
	ctx := ctxTimeout(t, 30*time.Second)
	w := startWatch(t, endpointsFlag(), "--json", key)
	if line := w.next(); !strings.Contains(line, `"unlocked"`) {
		t.Fatalf("first watch line %q", line)
	}
	var tokens []int64
	for i := range 3 {
		m, err := microlock.New(c, key, microlock.WithLimit(3), microlock.WithNodeID(fmt.Sprint("sem-", i)))
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Lock(ctx); err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, m.Token())
		var ev eventJSON
		if err := json.Unmarshal([]byte(w.next()), &ev); err != nil || ev.Holders != i+1 || len(ev.HeldBy) != i+1 ||
			ev.HeldBy[i].Holder != fmt.Sprint("sem-", i) || ev.HeldBy[i].Token != m.Token() {
			t.Fatalf("watch after %d acquisitions: %+v, %v", i+1, ev, err)
		}
	}
	code, stdout, stderr := runMicrolock(t, "holder", endpointsFlag(), key)
	if code != 0 {
		t.Fatalf("holder: exit %d, %s", code, stderr)
	}
	for _, want := range []string{"holders:  3", `"sem-0"  token`, `"sem-2"  token ` + fmt.Sprint(tokens[2]), "waiting:  0"} {
		if !strings.Contains(stdout, want) {
			t.Fatalf("holder's output lacks %q:\n%s", want, stdout)
		}
	}
	h := holderJSONOf(t, key)
	if h.Holders != 3 || len(h.HeldBy) != 3 || h.HeldBy[1].Token != tokens[1] || h.Holder != "sem-0" || h.Waiting != 0 {
		t.Fatalf("holder --json: %+v", h)
	}
	w.stop()
}
