package faultproxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/microlock/microlock/internal/faultproxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer answers every line with the same line until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// roundTrip sends a line and waits up to d for its echo.
func roundTrip(c net.Conn, r *bufio.Reader, d time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(d))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line != "ping\n" {
		return errors.New("echo mangled: " + line)
	}
	return nil
}

func TestBlackholeHeal(t *testing.T) {
	p, err := faultproxy.New("tcp://" + echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.URL() != "http://"+p.Addr() {
		t.Fatalf("URL %q does not match Addr %q", p.URL(), p.Addr())
	}
	old, oldR := dial(t, p.Addr())
	if err := roundTrip(old, oldR, 5*time.Second); err != nil {
		t.Fatalf("before Blackhole: %v", err)
	}

	p.Blackhole()
	// Silence, not a reset: the open connection and a new one both time out.
	if err := roundTrip(old, oldR, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("open connection while blackholed: %v, want a timeout", err)
	}
	c, r := dial(t, p.Addr())
	if err := roundTrip(c, r, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection while blackholed: %v, want a timeout", err)
	}

	p.Heal()
	// Connections that lost bytes are closed; new ones work.
	_ = old.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := oldR.ReadString('\n'); !errors.Is(err, io.EOF) {
		t.Fatalf("blackholed connection after Heal: %v, want EOF", err)
	}
	c, r = dial(t, p.Addr())
	if err := roundTrip(c, r, 5*time.Second); err != nil {
		t.Fatalf("after Heal: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestDropRule(t *testing.T) {
	var cut bool
	p, err := faultproxy.New(echoServer(t), faultproxy.WithDropRule(func(*faultproxy.Conn) bool { return cut }))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, r := dial(t, p.Addr())
	if err := roundTrip(c, r, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	p.Update(func() { cut = true })
	if err := roundTrip(c, r, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("while the rule drops: %v, want a timeout", err)
	}
	p.HealWith(func() { cut = false })
	c, r = dial(t, p.Addr())
	if err := roundTrip(c, r, 5*time.Second); err != nil {
		t.Fatalf("after HealWith: %v", err)
	}
}

func TestBadTarget(t *testing.T) {
	if _, err := faultproxy.New("no-port"); err == nil {
		t.Fatal("New(\"no-port\") succeeded")
	}
}
