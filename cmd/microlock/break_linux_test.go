package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/microlock/microlock"
)

// openPTY returns a new pseudo-terminal: its master side, which the test
// types on, and the terminal itself, for a process's stdin.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	fd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlocking the pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("numbering the pseudo-terminal: %v", err)
	}
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close() })
	return master, tty
}

// holdAs takes the lock on key for nodeID in this process.
func holdAs(t *testing.T, key, nodeID string) *microlock.Mutex {
	t.Helper()
	m, err := microlock.New(shared.Client(t), key, microlock.WithNodeID(nodeID))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	if err := m.TryLock(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	return m
}

// startBreakOnTerminal starts `microlock break KEY` with a terminal as its
// stdin and waits for its question.
func startBreakOnTerminal(t *testing.T, key string) (p *proc, master *os.File) {
	t.Helper()
	master, tty := openPTY(t)
	p = startWith(t, "", tty, nil, "break", endpointsFlag(), key)
	eventually(t, 20*time.Second, "break's question", func() error {
		if strings.Contains(p.stderr.String(), "[y/N]") {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%w: break exited; stderr:\n%s", errNotYet, p.stderr.String())
		default:
			return errNotYet
		}
	})
	return p, master
}

func stillHolds(t *testing.T, m *microlock.Mutex) {
	t.Helper()
	select {
	case <-m.Done():
		t.Fatalf("%s lost the lock: %v", m.NodeID(), m.Err())
	case <-time.After(300 * time.Millisecond):
	}
	if m.Token() == 0 || keysUnder(t, shared.Client(t), m.Key()) != 1 {
		t.Fatalf("%s's key is not the only one under %q any more", m.NodeID(), m.Key())
	}
}

// TestBreakConfirm: without --force on a terminal, break shows the holder
// and asks; "y" breaks the hold, anything else, or SIGINT, leaves it.
func TestBreakConfirm(t *testing.T) {
	t.Run("yes", func(t *testing.T) {
		t.Parallel()
		key := testKey(t)
		m := holdAs(t, key, "ask-me")
		p, master := startBreakOnTerminal(t, key)
		for _, want := range []string{`holder:   "ask-me"`, fmt.Sprintf("token:    %d", m.Token())} {
			if !strings.Contains(p.stderr.String(), want) {
				t.Fatalf("the question does not show %q:\n%s", want, p.stderr.String())
			}
		}
		if _, err := master.WriteString("y\n"); err != nil {
			t.Fatal(err)
		}
		p.expectExit(20*time.Second, 0)
		if out := p.stdout.String(); !strings.Contains(out, `"ask-me"`) {
			t.Fatalf("break's output does not name the holder:\n%s", out)
		}
		select {
		case <-m.Done():
		case <-time.After(breakNotice):
			t.Fatalf("the holder did not hear within %v that its hold was broken", breakNotice)
		}
	})
	t.Run("no", func(t *testing.T) {
		t.Parallel()
		key := testKey(t)
		m := holdAs(t, key, "spare-me")
		p, master := startBreakOnTerminal(t, key)
		if _, err := master.WriteString("\n"); err != nil { // the default: no
			t.Fatal(err)
		}
		p.expectExit(20*time.Second, exitNotConfirmed)
		if msg := p.stderr.String(); !strings.Contains(msg, "not confirmed") || p.stdout.String() != "" {
			t.Fatalf("break after no: stdout %q, stderr:\n%s", p.stdout.String(), msg)
		}
		stillHolds(t, m)
	})
	t.Run("SIGINT", func(t *testing.T) {
		t.Parallel()
		key := testKey(t)
		m := holdAs(t, key, "spare-me-too")
		p, _ := startBreakOnTerminal(t, key)
		p.signal(syscall.SIGINT)
		p.expectExit(20*time.Second, 128+int(syscall.SIGINT))
		stillHolds(t, m)
	})
}

// TestBreakHolderChanged: the holder that break showed leaves while the
// question waits, and another takes the lock. "y" then breaks nothing:
// break exits with 75 and names the new holder, which keeps the lock.
func TestBreakHolderChanged(t *testing.T) {
	t.Parallel()
	key := testKey(t)
	first := holdAs(t, key, "first")
	p, master := startBreakOnTerminal(t, key)
	if err := first.Unlock(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	second := holdAs(t, key, "second")
	if _, err := master.WriteString("y\n"); err != nil {
		t.Fatal(err)
	}
	p.expectExit(20*time.Second, exitHolderChanged)
	msg := p.stderr.String()
	for _, want := range []string{"changed", `"first"`, `now held by "second"`, fmt.Sprintf("token %d", second.Token()), "Nothing was deleted"} {
		if !strings.Contains(msg, want) {
			t.Fatalf("break's message lacks %q:\n%s", want, msg)
		}
	}
	stillHolds(t, second)
}
