// Package faultproxy is a TCP proxy on a loopback port that can cut
// connections off the way a network partition does: bytes are read and
// discarded, and the connections stay open and silent instead of being
// reset, so that the peers on both sides find out only through their own
// timeouts. microlock's test harness and its demo put it between an etcd
// client (or member) and etcd.
package faultproxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards every connection made to it to one target. Whether a chunk
// of bytes is forwarded or discarded is decided per chunk, so Blackhole and
// Heal act on open connections as well as on new ones. Its methods are safe
// for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener
	peek   bool             // read the sender's member ID from the first request head
	rule   func(*Conn) bool // extra drop rule; called with mu read-locked
	ctx    context.Context  // cancels dials in flight on Close
	cancel context.CancelFunc

	// mu is read-locked while a pump decides about and marks a chunk, and
	// write-locked to change the drop state. So once a heal has cleared the
	// state and collected the marked connections, no pump can still be
	// discarding on a connection that the heal did not see.
	mu         sync.RWMutex
	conns      map[*Conn]struct{}
	blackholed bool
	closed     bool
	delay      time.Duration // how long bytes to the target are held back

	once     sync.Once
	closeErr error
	wg       sync.WaitGroup
}

// Conn is one proxied connection, as a drop rule sees it.
type Conn struct {
	in      net.Conn
	out     net.Conn    // set under Proxy.mu once dialled
	from    uint64      // set with out
	dropped atomic.Bool // some bytes were discarded
}

// From returns the etcd member ID that the connection's first HTTP request
// names in its X-Server-From header, or 0 if it names none or the proxy was
// not made WithSenderID.
func (c *Conn) From() uint64 { return c.from }

func (c *Conn) close() {
	c.in.Close()
	if c.out != nil {
		c.out.Close()
	}
}

// An Option configures New.
type Option func(*Proxy)

// WithSenderID makes the proxy read the first HTTP request head of every
// connection (up to 64 KiB, for at most 5 s) before dialling the target, to
// learn the sender from its X-Server-From header: etcd members set it on
// every request they send to a peer, and it is the only way to tell them
// apart, since they all dial from one address on ephemeral ports.
func WithSenderID() Option { return func(p *Proxy) { p.peek = true } }

// WithDropRule adds a rule that discards a connection's bytes while it
// returns true, on top of Blackhole. The rule runs with the proxy's state
// read-locked; the state it reads must be changed only inside Update or
// HealWith.
func WithDropRule(rule func(*Conn) bool) Option { return func(p *Proxy) { p.rule = rule } }

// New starts a proxy on 127.0.0.1:0 that forwards every connection to
// target, given as "host:port" or as a URL such as "http://host:port".
func New(target string, opts ...Option) (*Proxy, error) {
	addr, err := hostPort(target)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: target %q: %v", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		target: addr,
		ln:     ln,
		ctx:    ctx,
		cancel: cancel,
		conns:  make(map[*Conn]struct{}),
	}
	for _, o := range opts {
		o(p)
	}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the proxy's listening address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL returns "http://" + Addr().
func (p *Proxy) URL() string { return "http://" + p.Addr() }

// Blackhole makes the proxy read and discard every byte, in both directions,
// on open and new connections, until Heal.
func (p *Proxy) Blackhole() { p.Update(func() { p.blackholed = true }) }

// Delay holds back every byte sent to the target for d after the proxy read
// it, in order, on open connections as well as new ones; 0 ends it for the
// bytes read from then on. It makes a request arrive late without losing it:
// a write that its client gave up on lands after whatever the client sent
// next on another connection.
func (p *Proxy) Delay(d time.Duration) { p.Update(func() { p.delay = d }) }

// Heal undoes Blackhole and closes every connection that discarded bytes,
// since their streams are corrupt; new connections are forwarded normally.
func (p *Proxy) Heal() { p.HealWith(nil) }

// Update runs fn with the drop state write-locked: the only safe place to
// change what a WithDropRule rule reads.
func (p *Proxy) Update(fn func()) {
	p.mu.Lock()
	fn()
	p.mu.Unlock()
}

// HealWith is Heal that also runs reset (which may be nil) under the same
// lock, to clear the state a WithDropRule rule reads.
func (p *Proxy) HealWith(reset func()) {
	var bad []*Conn
	p.mu.Lock()
	p.blackholed = false
	if reset != nil {
		reset()
	}
	for c := range p.conns {
		if c.dropped.Load() {
			bad = append(bad, c)
		}
	}
	p.mu.Unlock()
	// Closing makes the pumps end; serve then forgets the connection.
	for _, c := range bad {
		p.mu.RLock() // c.out may still be being set
		c.close()
		p.mu.RUnlock()
	}
}

// Senders returns the sender of every open connection (see Conn.From), one
// entry per connection, 0 for those that named none.
func (p *Proxy) Senders() []uint64 {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := make([]uint64, 0, len(p.conns))
	for c := range p.conns {
		out = append(out, c.from)
	}
	return out
}

// Close stops listening, closes all connections and waits for all of the
// proxy's goroutines. Only the first call does anything.
func (p *Proxy) Close() error {
	p.once.Do(func() {
		p.closeErr = p.ln.Close()
		p.cancel()
		p.mu.Lock()
		p.closed = true
		for c := range p.conns {
			c.close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p.closeErr
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed; Accept on loopback fails for no other reason
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(in net.Conn) {
	defer p.wg.Done()
	c := &Conn{in: in}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		in.Close()
		return
	}
	p.conns[c] = struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
		c.close()
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
	c.out, c.from = out, from
	closed := p.closed
	p.mu.Unlock()
	if closed {
		return // Close ran before out was set, so it did not close out
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		p.pump(c, in, out)
	}()
	p.pumpDelayed(c, out, r)
	<-done
}

// chunk is bytes on their way to the target, and when to send them.
type chunk struct {
	b  []byte
	at time.Time
}

// pumpDelayed is pump for the bytes to the target, through a delay line:
// each chunk is written once its delay, set when it was read, has passed.
func (p *Proxy) pumpDelayed(c *Conn, dst io.Writer, src io.Reader) {
	defer c.close()
	line := make(chan chunk, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer c.close()
		for ch := range line {
			if d := time.Until(ch.at); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(ch.b); err != nil {
				for range line { // drain until the reader stops
				}
				return
			}
		}
	}()
	defer func() { <-done }()
	defer close(line)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.discard(c) {
			p.mu.RLock()
			d := p.delay
			p.mu.RUnlock()
			line <- chunk{b: bytes.Clone(buf[:n]), at: time.Now().Add(d)}
		}
		if err != nil {
			return
		}
	}
}

// pump copies src to dst, discarding chunks while the proxy says so, until
// either side fails; it then closes both sides so that the other pump ends
// too.
func (p *Proxy) pump(c *Conn, dst io.Writer, src io.Reader) {
	defer c.close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.discard(c) {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *Proxy) discard(c *Conn) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if !p.blackholed && (p.rule == nil || !p.rule(c)) {
		return false
	}
	c.dropped.Store(true)
	return true
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
