// Package etcdtest runs real etcd clusters, and proxies in front of them, for
// microlock's tests and for the command-line tool's demo. Nothing is mocked:
// members are etcd processes built from the tools module (see EtcdBinary) or
// the binary given WithBinary, partitions are made by proxies that swallow
// bytes, and hangs by SIGSTOP.
//
// Everything a test starts here is torn down at tb.Cleanup, processes and
// goroutines alike, so tests can use goleak.VerifyTestMain; a program that
// uses Launch or LaunchContext calls Stop.
package etcdtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// startTimeout bounds Start, Restart and a Leader call without a deadline.
const startTimeout = 30 * time.Second

// Cluster is a running etcd cluster on loopback ports.
type Cluster struct {
	Members []*Member

	cfg config
	bin string
	dir string           // data dirs and logs of all members
	cli *clientv3.Client // for MemberList and Status

	mu       sync.Mutex
	isolated map[*Member]bool

	stopOnce sync.Once
}

// Option configures Start.
type Option func(*config)

type config struct {
	bin         string // the etcd server binary; EtcdBinary's when empty
	peerProxies bool
	args        []string
	dataDir     string
	tls         *ClientTLS
}

// WithBinary runs the etcd server binary at path instead of EtcdBinary's,
// which is built from the repository's tools module.
func WithBinary(path string) Option { return func(c *config) { c.bin = path } }

// WithPeerProxies puts a proxy in front of every member's peer listener so
// that Isolate can partition members. It needs plain-HTTP peer traffic: the
// proxy reads the sender from rafthttp's request headers.
func WithPeerProxies() Option { return func(c *config) { c.peerProxies = true } }

// WithArgs adds etcd flags for every member. They come after the harness's
// own flags, so they also override them (for example --election-timeout).
func WithArgs(args ...string) Option {
	return func(c *config) { c.args = append(c.args, args...) }
}

// WithDataDir puts the members' data and logs in a new directory under dir
// instead of on tmpfs, for measuring etcd on a real disk. The harness's
// --unsafe-no-fsync still applies; add WithArgs("--unsafe-no-fsync=false")
// to have etcd sync its writes.
func WithDataDir(dir string) Option { return func(c *config) { c.dataDir = dir } }

// ClientTLS is the TLS setup of the members' client listeners.
type ClientTLS struct {
	// CertFile and KeyFile hold the members' certificate and key, in PEM.
	// The certificate must be valid for the IP address 127.0.0.1.
	CertFile, KeyFile string
	// ClientCAFile, if set, holds the CA certificates, in PEM, that must have
	// signed a client's certificate: members then refuse clients without
	// one (etcd's --client-cert-auth).
	ClientCAFile string
	// Config is what the harness's own clients use (readiness checks,
	// Leader, Client): it must trust CertFile's issuer and, with
	// ClientCAFile, present a client certificate.
	Config *tls.Config
}

// WithClientTLS makes members serve clients over TLS only, on https client
// URLs. Peer traffic stays plain HTTP, so WithPeerProxies still works.
func WithClientTLS(t ClientTLS) Option { return func(c *config) { c.tls = &t } }

// clientTLS returns the TLS configuration of the harness's clients, nil
// without WithClientTLS.
func (c *config) clientTLS() *tls.Config {
	if c.tls == nil {
		return nil
	}
	return c.tls.Config
}

// Start starts a cluster of size members and returns once every member
// serves a linearizable Get, or calls tb.Fatal after 30 s. Data lives under
// /dev/shm when it exists, for speed. tb.Cleanup kills all processes (even
// paused ones), closes the proxies and the harness's clients and removes the
// data; if the test failed, it first logs the tail of every member's log.
func Start(tb testing.TB, size int, opts ...Option) *Cluster {
	tb.Helper()
	c, err := Launch(size, opts...)
	if err != nil {
		tb.Fatalf("etcdtest: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			for _, m := range c.Members {
				tb.Logf("etcdtest: last lines of member %s's log:\n%s", m.Name, tail(m.logPath))
			}
		}
		c.Stop()
	})
	return c
}

// Launch is Start for a TestMain, which has no testing.TB: the caller must
// call Stop. Examples use a cluster launched this way.
func Launch(size int, opts ...Option) (*Cluster, error) {
	return LaunchContext(context.Background(), size, opts...)
}

// LaunchContext is Launch that gives up when ctx is done, for a program
// that a signal may interrupt while etcd starts.
func LaunchContext(ctx context.Context, size int, opts ...Option) (*Cluster, error) {
	if size < 1 {
		return nil, fmt.Errorf("cluster size %d, want at least 1", size)
	}
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	bin := cfg.bin
	if bin == "" {
		var err error
		if bin, err = EtcdBinary(); err != nil {
			return nil, err
		}
	}
	for attempt := 1; ; attempt++ {
		c := &Cluster{cfg: cfg, bin: bin, isolated: make(map[*Member]bool)}
		err := c.launch(ctx, size)
		if err == nil {
			return c, nil
		}
		c.Stop()
		// Free ports are only free until someone else takes them.
		if attempt == 1 && errors.Is(err, errAddrInUse) {
			continue
		}
		return nil, fmt.Errorf("starting a %d-member cluster: %w", size, err)
	}
}

// launch starts the processes of a new cluster and waits until they serve,
// or until ctx is done. On error, the caller must still call stop.
func (c *Cluster) launch(ctx context.Context, size int) error {
	dir, err := makeDataDir(c.cfg.dataDir)
	if err != nil {
		return err
	}
	c.dir = dir

	if err := c.addMembers(size); err != nil {
		return err
	}
	for _, m := range c.Members {
		m.mu.Lock()
		err := m.startLocked()
		m.mu.Unlock()
		if err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for _, m := range c.Members {
		if err := m.waitServing(ctx, m.proc, true); err != nil {
			return err
		}
	}

	if c.cli, err = newClient(c.cfg.clientTLS(), c.Endpoints()...); err != nil {
		return err
	}
	return c.readMemberIDs(ctx)
}

// readMemberIDs learns each member's ID from the member list.
func (c *Cluster) readMemberIDs(ctx context.Context) error {
	resp, err := c.cli.MemberList(ctx)
	if err != nil {
		return fmt.Errorf("listing members: %v", err)
	}
	for _, pm := range resp.Members {
		if m := c.member(pm.Name); m != nil {
			m.id = pm.ID
		}
	}
	for _, m := range c.Members {
		if m.id == 0 {
			return fmt.Errorf("member %s missing from the member list", m.Name)
		}
	}
	return nil
}

// addMembers makes the cluster's size members, on free ports, with their
// flags, and their peer proxies WithPeerProxies; it starts no process.
func (c *Cluster) addMembers(size int) error {
	ports, err := freePorts(2 * size)
	if err != nil {
		return err
	}
	var initial []string
	for i := range size {
		m, advertised, err := c.newMember(fmt.Sprintf("m%d", i), ports[2*i], ports[2*i+1])
		if err != nil {
			return err
		}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+advertised)
	}
	for _, m := range c.Members {
		m.args = append(m.args,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", filepath.Base(c.dir), // unique, so strays cannot join
			"--heartbeat-interval", "100",
			"--election-timeout", "1000",
			"--log-level", "warn",
			// Tests kill processes, not machines: written data is in the
			// page cache either way, and fsync only costs time.
			"--unsafe-no-fsync",
		)
		m.args = append(m.args, c.cfg.args...)
	}
	return nil
}

// newMember makes the member name, listening for clients on clientPort and
// for peers on peerPort, with its own flags, and returns the peer URL it
// advertises: its peer proxy's WithPeerProxies.
func (c *Cluster) newMember(name, clientPort, peerPort string) (m *Member, advertised string, err error) {
	scheme := "http"
	if c.cfg.tls != nil {
		scheme = "https"
	}
	m = &Member{
		Name:      name,
		ClientURL: scheme + "://127.0.0.1:" + clientPort,
		c:         c,
		peerURL:   "http://127.0.0.1:" + peerPort,
		logPath:   filepath.Join(c.dir, name+".log"),
	}
	advertised = m.peerURL
	if c.cfg.peerProxies {
		if m.peer, err = newPeerProxy("127.0.0.1:" + peerPort); err != nil {
			return nil, "", err
		}
		advertised = "http://" + m.peer.Addr()
	}
	m.args = []string{
		"--name", name,
		"--data-dir", filepath.Join(c.dir, name+".data"),
		"--listen-client-urls", m.ClientURL,
		"--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.peerURL,
		"--initial-advertise-peer-urls", advertised,
	}
	if t := c.cfg.tls; t != nil {
		m.args = append(m.args, "--cert-file", t.CertFile, "--key-file", t.KeyFile)
		if t.ClientCAFile != "" {
			m.args = append(m.args, "--client-cert-auth", "--trusted-ca-file", t.ClientCAFile)
		}
	}
	return m, advertised, nil
}

// Stop kills every member, closes the proxies and the harness's clients and
// removes the data. Only the first call does anything.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		if c.cli != nil {
			_ = c.cli.Close()
		}
		for _, m := range c.Members {
			m.terminate()
		}
		for _, m := range c.Members {
			if m.peer != nil {
				_ = m.peer.Close()
			}
		}
		if c.dir != "" {
			_ = os.RemoveAll(c.dir)
		}
	})
}

func (c *Cluster) member(name string) *Member {
	for _, m := range c.Members {
		if m.Name == name {
			return m
		}
	}
	return nil
}

// Dir returns the directory of the members' data and logs, which Stop
// removes.
func (c *Cluster) Dir() string { return c.dir }

// Endpoints returns the direct client URLs of all members, in member order.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.Members))
	for i, m := range c.Members {
		eps[i] = m.ClientURL
	}
	return eps
}

// Client returns a client for endpoints, by default Endpoints(), with a 5 s
// dial timeout, a no-op logger and, WithClientTLS, its Config. It is closed
// at tb.Cleanup.
func (c *Cluster) Client(tb testing.TB, endpoints ...string) *clientv3.Client {
	tb.Helper()
	if len(endpoints) == 0 {
		endpoints = c.Endpoints()
	}
	cli, err := newClient(c.cfg.clientTLS(), endpoints...)
	if err != nil {
		tb.Fatalf("etcdtest: client for %v: %v", endpoints, err)
	}
	tb.Cleanup(func() { _ = cli.Close() })
	return cli
}

func newClient(tlsCfg *tls.Config, endpoints ...string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		TLS:         tlsCfg,
	})
}

// Leader asks every running, unpaused member for its Status and returns the
// member that a majority of the cluster names as leader. While there is no
// such majority (during an election, say) it polls until ctx is done, or for
// 30 s if ctx has no deadline.
func (c *Cluster) Leader(ctx context.Context) (*Member, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, startTimeout)
		defer cancel()
	}
	for {
		if m := c.leaderOnce(ctx); m != nil {
			return m, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no leader agreed on by a majority: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Cluster) leaderOnce(ctx context.Context) *Member {
	votes := make([]uint64, len(c.Members))
	var wg sync.WaitGroup
	for i, m := range c.Members {
		if !m.serving() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Bounded per member: one that hangs must not hide the others.
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if st, err := c.cli.Status(sctx, m.ClientURL); err == nil {
				votes[i] = st.Leader
			}
		}()
	}
	wg.Wait()
	count := make(map[uint64]int)
	for _, id := range votes {
		if id != 0 {
			count[id]++
		}
	}
	for _, m := range c.Members {
		if count[m.id] > len(c.Members)/2 {
			return m
		}
	}
	return nil
}

// Isolate cuts all peer traffic between m and every other member, in both
// directions, until HealPeers; client traffic to m is unaffected. It panics
// unless the cluster was started WithPeerProxies.
//
// There is one proxy per member, in front of its peer listener, because etcd
// advertises a single peer URL per member. Isolating m therefore drops the
// bytes of every connection into m's proxy, and of every connection into the
// other proxies whose first request says it comes from m. A connection that
// m opens to a peer without an X-Server-From header (version probes, say)
// still gets through; raft traffic always carries the header.
func (c *Cluster) Isolate(m *Member) {
	if !c.cfg.peerProxies {
		panic("etcdtest: Isolate requires WithPeerProxies")
	}
	c.mu.Lock()
	c.isolated[m] = true
	c.mu.Unlock()
	for _, o := range c.Members {
		pp := o.peer
		if o == m {
			pp.Update(func() { pp.into = true })
		} else {
			pp.Update(func() { pp.from[m.id] = true })
		}
	}
}

// HealPeers undoes every Isolate. Connections that dropped bytes are closed,
// since their streams are corrupt; etcd dials new ones.
func (c *Cluster) HealPeers() {
	c.mu.Lock()
	clear(c.isolated)
	c.mu.Unlock()
	for _, o := range c.Members {
		if pp := o.peer; pp != nil {
			pp.HealWith(func() {
				pp.into = false
				clear(pp.from)
			})
		}
	}
}

func (c *Cluster) isIsolated(m *Member) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.isolated[m]
}

// quorumReachable reports whether m, once running, could take part in a
// quorum: it is not isolated and, counting m, a majority of members are
// running, unpaused and not isolated.
func (c *Cluster) quorumReachable(m *Member) bool {
	if c.isIsolated(m) {
		return false
	}
	n := 0
	for _, o := range c.Members {
		if o == m || (o.serving() && !c.isIsolated(o)) {
			n++
		}
	}
	return n > len(c.Members)/2
}

var sweepOnce sync.Once

// makeDataDir creates the directory for a cluster's data and logs, under
// root if it is set, otherwise on tmpfs when there is one. Its name carries our PID, so that later test processes
// can remove it if we die without running Cleanup (SIGKILL, or Ctrl-C, which
// go test does not turn into Cleanup): on tmpfs, the WAL that etcd
// preallocates costs about 125 MB of RAM per member.
func makeDataDir(root string) (string, error) {
	sweepOnce.Do(func() {
		sweep("/dev/shm")
		sweep(os.TempDir())
	})
	prefix := fmt.Sprintf("etcdtest-%d-", os.Getpid())
	if root != "" {
		sweep(root)
		return os.MkdirTemp(root, prefix)
	}
	if dir, err := os.MkdirTemp("/dev/shm", prefix); err == nil {
		return dir, nil
	}
	return os.MkdirTemp("", prefix)
}

// sweep removes the data directories in root of test processes that no
// longer exist.
func sweep(root string) {
	dirs, _ := filepath.Glob(filepath.Join(root, "etcdtest-*-*"))
	for _, dir := range dirs {
		pid, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(dir), "etcdtest-"), "-")
		n, err := strconv.Atoi(pid)
		// Any answer but "no such process" (EPERM, say) means it may be alive.
		if err == nil && n > 0 && syscall.Kill(n, 0) == syscall.ESRCH {
			_ = os.RemoveAll(dir)
		}
	}
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// All listeners stay open until every port is picked, so none repeats.
func freePorts(n int) ([]string, error) {
	ports := make([]string, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer ln.Close()
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		ports = append(ports, port)
	}
	return ports, nil
}
