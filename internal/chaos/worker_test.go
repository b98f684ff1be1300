package chaos_test

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/microlock/microlock/internal/chaos"
	"github.com/microlock/microlock/internal/etcdtest"
)

// buildWorker builds the worker program into a temporary directory, once
// per test run, with the race detector if the test has it.
func buildWorker(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "worker")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "github.com/microlock/microlock/internal/chaos/worker")...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the worker: %v\n%s", err, out)
	}
	return bin
}

// workerProc is one running worker process and its proxies, one per etcd
// member: its only way to the cluster.
type workerProc struct {
	node    string
	proxies []*etcdtest.Proxy
	records string // the worker's JSON-lines file
	logPath string // its stdout and stderr

	cmd   *exec.Cmd
	stdin io.WriteCloser
	done  chan struct{} // closed once the process has exited and been reaped

	mu       sync.Mutex
	paused   bool
	stopOnce sync.Once
}

type workerConfig struct {
	bin, dir, node string
	variant        chaos.Variant
	ttl            time.Duration
	seed           uint64
	key, counter   string
	cluster        *etcdtest.Cluster
}

// startWorker starts a worker behind new proxies. The worker is stopped at
// t.Cleanup, if stop was not called before.
func startWorker(t *testing.T, cfg workerConfig) *workerProc {
	t.Helper()
	w := &workerProc{
		node:    cfg.node,
		records: filepath.Join(cfg.dir, cfg.node+".jsonl"),
		logPath: filepath.Join(cfg.dir, cfg.node+".log"),
		done:    make(chan struct{}),
	}
	var urls, names []string
	for _, m := range cfg.cluster.Members {
		p := etcdtest.NewProxy(t, m.ClientURL)
		w.proxies = append(w.proxies, p)
		urls = append(urls, p.URL())
		names = append(names, m.Name)
	}
	logf, err := os.Create(w.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close() // the child has its own descriptor
	w.cmd = exec.Command(cfg.bin,
		"-node", cfg.node,
		"-endpoints", strings.Join(urls, ","),
		"-members", strings.Join(names, ","),
		"-key", cfg.key,
		"-counter", cfg.counter,
		"-variant", string(cfg.variant),
		"-ttl", cfg.ttl.String(),
		"-seed", fmt.Sprint(cfg.seed),
		"-out", w.records,
	)
	// Files, not pipes to copy: os/exec then needs no goroutine of its own.
	w.cmd.Stdout, w.cmd.Stderr = logf, logf
	w.cmd.SysProcAttr = workerSysProcAttr()
	if w.stdin, err = w.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatalf("starting worker %s: %v", cfg.node, err)
	}
	go func() {
		_ = w.cmd.Wait() // the exit status is checked through the log
		close(w.done)
	}()
	t.Cleanup(func() {
		if err := w.stop(); err != nil {
			t.Error(err)
		}
	})
	return w
}

func (w *workerProc) running() bool {
	select {
	case <-w.done:
		return false
	default:
		return true
	}
}

// signal sends sig to the worker while it runs.
func (w *workerProc) signal(sig syscall.Signal) error {
	if !w.running() {
		return fmt.Errorf("worker %s exited; log:\n%s", w.node, tail(w.logPath))
	}
	return syscall.Kill(w.cmd.Process.Pid, sig)
}

// pause stops the worker with SIGSTOP.
func (w *workerProc) pause() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	w.paused = true
	return nil
}

// resume continues the worker with SIGCONT.
func (w *workerProc) resume() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.signal(syscall.SIGCONT); err != nil {
		return err
	}
	w.paused = false
	return nil
}

// cut blackholes all the worker's proxies: it is partitioned from the
// whole cluster.
func (w *workerProc) cut() {
	for _, p := range w.proxies {
		p.Blackhole()
	}
}

// heal undoes cut.
func (w *workerProc) heal() {
	for _, p := range w.proxies {
		p.Heal()
	}
}

// stopTimeout bounds a worker's orderly exit. A WithLock release after a
// stop takes at most microlock.ReleaseTimeout.
const stopTimeout = 20 * time.Second

// stop ends the worker by closing its input and waits for it, killing it if
// it does not exit in time. It reports a worker that had to be killed or
// that exited with an error.
func (w *workerProc) stop() error {
	var err error
	w.stopOnce.Do(func() {
		w.mu.Lock()
		if w.paused {
			_ = w.signal(syscall.SIGCONT)
			w.paused = false
		}
		w.mu.Unlock()
		_ = w.stdin.Close()
		select {
		case <-w.done:
		case <-time.After(stopTimeout):
			_ = w.cmd.Process.Kill()
			<-w.done
			err = fmt.Errorf("worker %s did not stop within %v; log:\n%s", w.node, stopTimeout, tail(w.logPath))
			return
		}
		if !w.cmd.ProcessState.Success() {
			// The log holds nothing but what went wrong, such as the race
			// detector's report (exit status 66): show it from the top.
			err = fmt.Errorf("worker %s: %v; log:\n%s", w.node, w.cmd.ProcessState, head(w.logPath))
		}
	})
	return err
}

// head returns the first lines of a log file.
func head(path string) string {
	const n = 80
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.SplitN(strings.TrimRight(string(b), "\n"), "\n", n+1)
	if len(lines) > n {
		lines = append(lines[:n], "...")
	}
	return strings.Join(lines, "\n")
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
