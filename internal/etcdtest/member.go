package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// errAddrInUse marks a member that exited because a port picked as free was
// taken in the meantime, typically by a parallel test binary.
var errAddrInUse = errors.New("address already in use")

// Member is one etcd process of a Cluster. Its methods are safe for
// concurrent use.
type Member struct {
	Name      string
	ClientURL string // direct client URL, "http://127.0.0.1:port" ("https" WithClientTLS)

	c       *Cluster
	id      uint64
	args    []string
	peerURL string     // the real peer listener, behind any peer proxy
	logPath string     // etcd's stdout and stderr, appended to across restarts
	peer    *peerProxy // in front of the peer listener; nil without WithPeerProxies

	mu     sync.Mutex
	proc   *process // the latest process; nil before the first start
	paused bool
}

// process is one run of etcd; done is closed once it has exited and been
// reaped.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *process) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// ID returns the etcd member ID, known once Start has returned.
func (m *Member) ID() uint64 { return m.id }

// LogPath returns the file that etcd's output goes to, appended to across
// restarts. It is removed with the cluster: copy it before the cleanup.
func (m *Member) LogPath() string { return m.logPath }

// PID returns the process ID of the running etcd, or 0 if it is not running.
func (m *Member) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil || !m.proc.running() {
		return 0
	}
	return m.proc.cmd.Process.Pid
}

// Kill sends SIGKILL and waits until the process has exited. It fails if the
// member is not running.
func (m *Member) Kill() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.proc
	if err := m.signalLocked(syscall.SIGKILL); err != nil {
		return err
	}
	<-p.done
	m.paused = false
	return nil
}

// Pause stops the process with SIGSTOP: it keeps its sockets but answers
// nothing, like a machine that hangs. Cleanup resumes it before killing it.
func (m *Member) Pause() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.signalLocked(syscall.SIGSTOP); err != nil {
		return err
	}
	m.paused = true
	return nil
}

// Resume continues a paused process with SIGCONT.
func (m *Member) Resume() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.signalLocked(syscall.SIGCONT); err != nil {
		return err
	}
	m.paused = false
	return nil
}

// Restart starts a killed member again with the same data dir and flags and
// waits up to 30 s until it serves a linearizable Get. etcd serves no client
// request at all before it reaches a quorum, so when the member is isolated
// or fewer than a quorum of members would be running, Restart waits only
// until the member's peer listener answers (it has loaded its data and runs
// raft); that way a whole cluster can be restarted one member at a time.
func (m *Member) Restart() error {
	m.mu.Lock()
	if m.proc != nil && m.proc.running() {
		m.mu.Unlock()
		return fmt.Errorf("member %s is still running", m.Name)
	}
	err := m.startLocked()
	p := m.proc
	m.mu.Unlock()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	return m.waitServing(ctx, p, m.c.quorumReachable(m))
}

// startLocked starts a new etcd process. m.mu must be held.
func (m *Member) startLocked() error {
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	// A file rather than a pipe: os/exec then needs no copying goroutine,
	// and the log survives the process for error messages.
	cmd := exec.Command(m.c.bin, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	err = cmd.Start()
	logf.Close() // the child has its own descriptor
	if err != nil {
		return fmt.Errorf("starting member %s: %v", m.Name, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait() // the exit status says nothing the log does not
		close(p.done)
	}()
	m.proc, m.paused = p, false
	return nil
}

// signalLocked signals the running process's group. m.mu must be held; it
// keeps the waiter from reaping the process between the check and the
// signal, except for a process that dies by itself in that instant, and the
// group (not the bare PID) makes a recycled PID unlikely to be hit.
func (m *Member) signalLocked(sig syscall.Signal) error {
	if m.proc == nil || !m.proc.running() {
		return fmt.Errorf("member %s is not running", m.Name)
	}
	if err := syscall.Kill(-m.proc.cmd.Process.Pid, sig); err != nil {
		return fmt.Errorf("signalling member %s: %v", m.Name, err)
	}
	return nil
}

// terminate kills the process if it is running, resuming it first if it is
// paused, and waits for it.
func (m *Member) terminate() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil || !m.proc.running() {
		return
	}
	if m.paused {
		_ = m.signalLocked(syscall.SIGCONT)
	}
	_ = m.signalLocked(syscall.SIGKILL)
	<-m.proc.done
	m.paused = false
}

// serving reports whether the process is running and not paused.
func (m *Member) serving() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc != nil && m.proc.running() && !m.paused
}

// waitServing polls the member until it serves a linearizable Get (or, if
// !linearizable, its peer listener answers), process p exits, or ctx is
// done.
func (m *Member) waitServing(ctx context.Context, p *process, linearizable bool) error {
	cli, err := newClient(m.c.cfg.clientTLS(), m.ClientURL)
	if err != nil {
		return err
	}
	defer cli.Close()
	// No keep-alive, so no idle connection goroutines outlive the probe.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	defer hc.CloseIdleConnections()
	for {
		tctx, cancel := context.WithTimeout(ctx, time.Second)
		if linearizable {
			_, err = cli.Get(tctx, "/etcdtest/probe")
		} else {
			err = getOK(tctx, hc, m.peerURL+"/version")
		}
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return m.exitError()
		case <-ctx.Done():
			return fmt.Errorf("member %s not serving: %v; last log lines:\n%s", m.Name, err, tail(m.logPath))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func getOK(ctx context.Context, hc *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// exitError describes a process that exited on its own, wrapping
// errAddrInUse when that was the reason.
func (m *Member) exitError() error {
	log := tail(m.logPath)
	if strings.Contains(log, "address already in use") {
		return fmt.Errorf("member %s exited: %w; last log lines:\n%s", m.Name, errAddrInUse, log)
	}
	return fmt.Errorf("member %s exited; last log lines:\n%s", m.Name, log)
}

// tail returns the last lines of a log file.
func tail(path string) string {
	const n = 20
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
