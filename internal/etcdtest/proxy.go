package etcdtest

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a TCP proxy on a loopback port that forwards to one target and
// can blackhole traffic, to cut a client off etcd the way a network
// partition does: connections stay open and silent instead of being reset.
type Proxy struct {
	p          *proxy
	blackholed bool // guarded by p.mu
}

// NewProxy starts a proxy on 127.0.0.1:0 that forwards every connection to
// target ("host:port" or "http://host:port"). It is closed at tb.Cleanup.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	addr, err := hostPort(target)
	if err != nil {
		tb.Fatalf("etcdtest: proxy target %q: %v", target, err)
	}
	pub := &Proxy{}
	p, err := newProxy(addr, false, func(*link) bool { return pub.blackholed })
	if err != nil {
		tb.Fatalf("etcdtest: %v", err)
	}
	pub.p = p
	tb.Cleanup(func() { _ = p.close() })
	return pub
}

// Addr returns the proxy's listening address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.p.addr() }

// URL returns "http://" + Addr().
func (p *Proxy) URL() string { return "http://" + p.p.addr() }

// Blackhole makes the proxy read and discard every byte, in both directions,
// on existing and new connections, until Heal.
func (p *Proxy) Blackhole() { p.p.update(func() { p.blackholed = true }) }

// Heal closes every connection that discarded bytes, since their streams are
// corrupt, and forwards normally again.
func (p *Proxy) Heal() { p.p.heal(func() { p.blackholed = false }) }

// Close stops listening, closes all connections and waits for all of the
// proxy's goroutines. Only the first call does anything.
func (p *Proxy) Close() error { return p.p.close() }

// proxy is the forwarding machinery shared by Proxy and the peer proxies of a
// Cluster. Whether a chunk of bytes is discarded is decided by drop, which
// sees state that callers change only through update and heal.
type proxy struct {
	target string
	ln     net.Listener
	peek   bool             // read the sender's member ID from the first request head
	drop   func(*link) bool // called with mu read-locked
	ctx    context.Context  // cancels dials in flight on close
	cancel context.CancelFunc

	// mu is read-locked while a pump decides about and marks a chunk, and
	// write-locked to change the drop state. So once heal has cleared the
	// state and collected the marked links, no pump can still be discarding
	// on a link that heal did not see.
	mu     sync.RWMutex
	links  map[*link]struct{}
	closed bool

	once     sync.Once
	closeErr error
	wg       sync.WaitGroup
}

// link is one proxied connection.
type link struct {
	in      net.Conn
	out     net.Conn    // set under proxy.mu once dialled
	from    uint64      // sender's member ID (X-Server-From), 0 if unknown; set with out
	dropped atomic.Bool // some bytes were discarded
}

func (l *link) close() {
	l.in.Close()
	if l.out != nil {
		l.out.Close()
	}
}

func newProxy(target string, peek bool, drop func(*link) bool) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &proxy{
		target: target,
		ln:     ln,
		peek:   peek,
		drop:   drop,
		ctx:    ctx,
		cancel: cancel,
		links:  make(map[*link]struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed; Accept on loopback fails for no other reason in tests
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *proxy) serve(in net.Conn) {
	defer p.wg.Done()
	l := &link{in: in}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		in.Close()
		return
	}
	p.links[l] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.links, l)
		p.mu.Unlock()
		l.close()
	}()

	var r io.Reader = in
	var from uint64
	if p.peek {
		var head []byte
		head, from, r = peekHead(in)
		// The head was consumed from the connection; forward it first.
		r = io.MultiReader(bytes.NewReader(head), r)
	}
	out, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		return
	}
	p.mu.Lock()
	l.out, l.from = out, from
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return // close ran before out was set, so it did not close out
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		p.pump(l, in, out)
	}()
	p.pump(l, out, r)
	<-done
}

// pump copies src to dst, discarding chunks while drop says so, until either
// side fails; it then closes both sides so that the other pump ends too.
func (p *proxy) pump(l *link, dst io.Writer, src io.Reader) {
	defer l.close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.discard(l) {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *proxy) discard(l *link) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if !p.drop(l) {
		return false
	}
	l.dropped.Store(true)
	return true
}

// update changes drop state under the write lock.
func (p *proxy) update(fn func()) {
	p.mu.Lock()
	fn()
	p.mu.Unlock()
}

// heal runs reset (which may be nil) under the write lock and closes every
// link that discarded bytes.
func (p *proxy) heal(reset func()) {
	var bad []*link
	p.mu.Lock()
	if reset != nil {
		reset()
	}
	for l := range p.links {
		if l.dropped.Load() {
			bad = append(bad, l)
		}
	}
	p.mu.Unlock()
	// Closing makes the pumps end; serve then forgets the link.
	for _, l := range bad {
		p.mu.RLock() // l.out may still be being set
		l.close()
		p.mu.RUnlock()
	}
}

func (p *proxy) close() error {
	p.once.Do(func() {
		p.closeErr = p.ln.Close()
		p.cancel()
		p.mu.Lock()
		p.closed = true
		for l := range p.links {
			l.close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p.closeErr
}

// peekHead reads the first HTTP request head of a peer connection (up to the
// blank line; at most 64 KiB and 5 s) and returns the bytes read,
// the member ID in its X-Server-From header (0 if absent) and a reader for
// the rest of the connection. rafthttp sets that header on every request a
// member sends to a peer, which is the only way to tell the sender apart:
// all members dial from 127.0.0.1 on ephemeral ports.
func peekHead(c net.Conn) (head []byte, from uint64, rest io.Reader) {
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	for len(head) < 64<<10 {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err != nil {
			// Timeout, EOF or an absurdly long line: not a rafthttp
			// request head, so forward it with no sender.
			break
		}
		s := strings.TrimRight(string(line), "\r\n")
		if s == "" {
			break
		}
		if k, v, ok := strings.Cut(s, ":"); ok && strings.EqualFold(strings.TrimSpace(k), "X-Server-From") {
			if id, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil {
				from = id
			}
		}
	}
	return head, from, br
}

// hostPort accepts "host:port" or a URL such as "http://host:port".
func hostPort(target string) (string, error) {
	if strings.Contains(target, "://") {
		u, err := url.Parse(target)
		if err != nil {
			return "", err
		}
		target = u.Host
	}
	if _, _, err := net.SplitHostPort(target); err != nil {
		return "", err
	}
	return target, nil
}
