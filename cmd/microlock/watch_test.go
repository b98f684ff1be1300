//go:build unix

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/microlock/microlock"
)

// watcher is a `microlock watch` process whose output lines the test reads
// as they come.
type watcher struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}
	errb  lockedBuffer
}

func startWatch(t *testing.T, args ...string) *watcher {
	t.Helper()
	w := &watcher{t: t, lines: make(chan string, 100), done: make(chan struct{})}
	w.cmd = exec.Command(microlockBin, append([]string{"watch"}, args...)...)
	w.cmd.Env = cleanEnv()
	w.cmd.Stderr = &w.errb
	out, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(w.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, out)
		_ = w.cmd.Wait()
		close(w.lines)
	}()
	t.Cleanup(func() {
		_ = w.cmd.Process.Kill()
		for range w.lines {
		}
		<-w.done
	})
	return w
}

func (w *watcher) next() string {
	w.t.Helper()
	select {
	case line, ok := <-w.lines:
		if !ok {
			w.t.Fatalf("watch ended early; stderr:\n%s", w.errb.String())
		}
		return line
	case <-time.After(10 * time.Second):
		w.t.Fatalf("no line from watch in 10s; stderr:\n%s", w.errb.String())
	}
	return ""
}

// stop sends SIGINT and checks that watch ends with 0 and prints nothing
// more.
func (w *watcher) stop() {
	w.t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGINT); err != nil {
		w.t.Fatal(err)
	}
	for line := range w.lines {
		w.t.Fatalf("unexpected line after SIGINT: %q", line)
	}
	<-w.done
	if code := w.cmd.ProcessState.ExitCode(); code != 0 {
		w.t.Fatalf("watch exited with %d after SIGINT, want 0; stderr:\n%s", code, w.errb.String())
	}
	if s := w.errb.String(); s != "" {
		w.t.Fatalf("watch wrote to stderr:\n%s", s)
	}
}

func TestWatch(t *testing.T) {
	t.Parallel()
	const stamp = `\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)`
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			t.Parallel()
			key := testKey(t)
			args := []string{endpointsFlag(), key}
			if format == "json" {
				args = append(args, "--json")
			}
			w := startWatch(t, args...)
			m, err := microlock.New(shared.Client(t), key, microlock.WithNodeID("node-w"))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()

			check := func(line, event, holder string, token int64) {
				t.Helper()
				if format == "text" {
					want := "^" + stamp + regexp.QuoteMeta(fmt.Sprintf("  unlocked  %q", key)) + "$"
					if event == "locked" {
						want = "^" + stamp + regexp.QuoteMeta(fmt.Sprintf("  locked    %q  holder %q  token %d", key, holder, token)) + "$"
					}
					if !regexp.MustCompile(want).MatchString(line) {
						t.Fatalf("line %q does not match %q", line, want)
					}
					return
				}
				var ev eventJSON
				if err := json.Unmarshal([]byte(line), &ev); err != nil {
					t.Fatalf("line %q: %v", line, err)
				}
				if ev.Key != key || ev.Event != event || ev.Holder != holder || ev.Token != token ||
					!regexp.MustCompile("^"+stamp+"$").MatchString(ev.Time) {
					t.Fatalf("line %q, want event %s, holder %q, token %d", line, event, holder, token)
				}
			}
			check(w.next(), "unlocked", "", 0)
			if err := m.TryLock(ctxTimeout(t, 5*time.Second)); err != nil {
				t.Fatal(err)
			}
			check(w.next(), "locked", "node-w", m.Token())
			if err := m.Unlock(context.Background()); err != nil {
				t.Fatal(err)
			}
			check(w.next(), "unlocked", "", 0)
			w.stop()
		})
	}
}

func TestWatchUnreachable(t *testing.T) {
	t.Parallel()
	code, _, stderr := runMicrolock(t, "watch", "--endpoints", "127.0.0.1:1", "--command-timeout", "500ms", "k")
	if code != exitUnavailable || !strings.Contains(stderr, "127.0.0.1:1") {
		t.Fatalf("exit %d, stderr %q; want %d and the endpoint", code, stderr, exitUnavailable)
	}
}
