package etcdtest

import (
	"testing"
	"time"

	"github.com/microlock/microlock/internal/faultproxy"
)

// Proxy is a TCP proxy on a loopback port that forwards to one target and
// can blackhole traffic, to cut a client off etcd the way a network
// partition does: connections stay open and silent instead of being reset.
type Proxy struct {
	p *faultproxy.Proxy
}

// NewProxy starts a proxy on 127.0.0.1:0 that forwards every connection to
// target ("host:port" or "http://host:port"). It is closed at tb.Cleanup.
func NewProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	p, err := faultproxy.New(target)
	if err != nil {
		tb.Fatalf("etcdtest: %v", err)
	}
	tb.Cleanup(func() { _ = p.Close() })
	return &Proxy{p: p}
}

// Addr returns the proxy's listening address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.p.Addr() }

// URL returns "http://" + Addr().
func (p *Proxy) URL() string { return p.p.URL() }

// Blackhole makes the proxy read and discard every byte, in both directions,
// on existing and new connections, until Heal.
func (p *Proxy) Blackhole() { p.p.Blackhole() }

// Delay holds back every byte sent to the target for d (see
// faultproxy.Proxy.Delay).
func (p *Proxy) Delay(d time.Duration) { p.p.Delay(d) }

// Heal closes every connection that discarded bytes, since their streams are
// corrupt, and forwards normally again.
func (p *Proxy) Heal() { p.p.Heal() }

// Close stops listening, closes all connections and waits for all of the
// proxy's goroutines. Only the first call does anything.
func (p *Proxy) Close() error { return p.p.Close() }

// peerProxy is the proxy in front of one member's peer listener. It reads
// the sender of every connection, so that Isolate can cut a member off in
// both directions with one proxy per member.
type peerProxy struct {
	*faultproxy.Proxy
	into bool            // the member behind the proxy is isolated; changed only in Update/HealWith
	from map[uint64]bool // isolated senders; changed only in Update/HealWith
}

func newPeerProxy(target string) (*peerProxy, error) {
	pp := &peerProxy{from: make(map[uint64]bool)}
	p, err := faultproxy.New(target, faultproxy.WithSenderID(), faultproxy.WithDropRule(func(c *faultproxy.Conn) bool {
		return pp.into || (c.From() != 0 && pp.from[c.From()])
	}))
	if err != nil {
		return nil, err
	}
	pp.Proxy = p
	return pp, nil
}
