//go:build unix

package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// In child mode the test binary is the command that `microlock run` runs. It
// appends marks to a file, one line per write, so that the marks of several
// processes interleave in the order they happened:
//
//	start ID UNIXNANO KEY NODE_ID TOKEN   (from its MICROLOCK_* environment)
//	tick ID UNIXNANO                      (every MLTEST_TICK, if set)
//	sig ID UNIXNANO INT|TERM              (a signal came)
//	end ID UNIXNANO                       (it exits by itself)
const childEnv = "MICROLOCK_TEST_CHILD"

// childSpec says how a child behaves.
type childSpec struct {
	id       string
	hold     time.Duration // how long it works before exiting by itself
	tick     time.Duration // 0: no ticks
	onSignal string        // "exit" (exit 0), "die" (be killed by the signal), "ignore"
	exitCode int
}

// command returns the arguments and environment that run the child.
func (s childSpec) command(marks string) (args, env []string) {
	hold := s.hold
	if hold == 0 {
		hold = time.Minute
	}
	return []string{os.Args[0]}, []string{
		childEnv + "=1",
		"MLTEST_MARKS=" + marks,
		"MLTEST_ID=" + s.id,
		"MLTEST_HOLD=" + hold.String(),
		"MLTEST_TICK=" + s.tick.String(),
		"MLTEST_ON_SIGNAL=" + s.onSignal,
		"MLTEST_EXIT=" + strconv.Itoa(s.exitCode),
	}
}

func childMain() int {
	f, err := os.OpenFile(os.Getenv("MLTEST_MARKS"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	defer f.Close()
	id := os.Getenv("MLTEST_ID")
	mark := func(kind string, fields ...string) {
		line := strings.Join(append([]string{kind, id, strconv.FormatInt(time.Now().UnixNano(), 10)}, fields...), " ")
		_, _ = f.WriteString(line + "\n")
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	hold, _ := time.ParseDuration(os.Getenv("MLTEST_HOLD"))
	tick, _ := time.ParseDuration(os.Getenv("MLTEST_TICK"))
	exitCode, _ := strconv.Atoi(os.Getenv("MLTEST_EXIT"))
	mark("start", os.Getenv("MICROLOCK_KEY"), os.Getenv("MICROLOCK_NODE_ID"), os.Getenv("MICROLOCK_TOKEN"))

	var ticks <-chan time.Time
	if tick > 0 {
		tk := time.NewTicker(tick)
		defer tk.Stop()
		ticks = tk.C
	}
	done := time.NewTimer(hold)
	for {
		select {
		case <-ticks:
			mark("tick")
		case s := <-sigs:
			name := map[os.Signal]string{syscall.SIGINT: "INT", syscall.SIGTERM: "TERM"}[s]
			mark("sig", name)
			switch os.Getenv("MLTEST_ON_SIGNAL") {
			case "ignore":
				continue
			case "die":
				signal.Reset(s)
				_ = syscall.Kill(os.Getpid(), s.(syscall.Signal))
				time.Sleep(10 * time.Second)
				return 4
			default:
				mark("end")
				return 0
			}
		case <-done.C:
			mark("end")
			return exitCode
		}
	}
}

// mark is one line of a marks file.
type mark struct {
	kind, id string
	at       time.Time
	fields   []string
}

func (m mark) String() string {
	return fmt.Sprintf("%s %s %s %v", m.kind, m.id, m.at.Format("15:04:05.000000"), m.fields)
}

// marksFile returns a new marks file's path in the test's directory.
func marksFile(t *testing.T) string {
	return filepath.Join(t.TempDir(), "marks")
}

func readMarks(t *testing.T, path string) []mark {
	t.Helper()
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []mark
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue // an empty file
		}
		ns, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			t.Fatalf("bad mark %q", line)
		}
		out = append(out, mark{kind: f[0], id: f[1], at: time.Unix(0, ns), fields: f[3:]})
	}
	return out
}

// find returns the index of the first mark of kind by id, or -1.
func find(marks []mark, kind, id string) int {
	for i, m := range marks {
		if m.kind == kind && m.id == id {
			return i
		}
	}
	return -1
}

// waitMark waits up to d for a mark of kind by id.
func waitMark(t *testing.T, path, kind, id string, d time.Duration) mark {
	t.Helper()
	var found mark
	eventually(t, d, fmt.Sprintf("mark %q of %s", kind, id), func() error {
		ms := readMarks(t, path)
		if i := find(ms, kind, id); i >= 0 {
			found = ms[i]
			return nil
		}
		return errNotYet
	})
	return found
}

func dumpMarks(ms []mark) string {
	var b strings.Builder
	for _, m := range ms {
		if m.kind != "tick" {
			b.WriteString(m.String() + "\n")
		}
	}
	return b.String()
}
