//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// findEtcd returns the etcd server binary for the demo: --etcd-binary, then
// $MICROLOCK_ETCD, then etcd next to the microlock executable (where make
// puts both), then bin/etcd in the working directory, then etcd in $PATH.
// A binary named explicitly must exist; the others are looked for.
func findEtcd(flagPath string, getenv func(string) string) (string, error) {
	for _, explicit := range []struct{ from, path string }{
		{"--etcd-binary", flagPath},
		{"MICROLOCK_ETCD", getenv("MICROLOCK_ETCD")},
	} {
		if explicit.path == "" {
			continue
		}
		if err := isExecutable(explicit.path); err != nil {
			return "", usageErrorf("demo: %s %s: %v", explicit.from, explicit.path, err)
		}
		return explicit.path, nil
	}
	var tried []string
	if exe, err := os.Executable(); err == nil {
		tried = append(tried, filepath.Join(filepath.Dir(exe), "etcd"))
	}
	tried = append(tried, filepath.Join("bin", "etcd"))
	for _, p := range tried {
		if isExecutable(p) == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	return "", &exitError{code: exitUnavailable, err: fmt.Errorf("microlock: demo: no etcd server found (looked for %s, and in $PATH).\n"+
		"Run \"make demo\" in the microlock repository: it builds the pinned etcd into bin/ and runs this demo.\n"+
		"Or name a binary with --etcd-binary or MICROLOCK_ETCD, or use a running cluster with --endpoints",
		strings.Join(tried, ", "))}
}

func isExecutable(path string) error {
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		return err
	case fi.IsDir():
		return errors.New("is a directory")
	case fi.Mode()&0o111 == 0:
		return errors.New("is not executable")
	}
	return nil
}

// localEtcd is a single-member etcd in a temporary directory.
type localEtcd struct {
	cmd      *exec.Cmd
	dir      string
	endpoint string
	exited   chan struct{}
}

// startLocalEtcd starts bin on two free loopback ports, with its data and
// log in a new temporary directory, and waits until it serves. The caller
// must call stop, which also removes the directory.
func startLocalEtcd(ctx context.Context, bin string) (*localEtcd, error) {
	for attempt := 1; ; attempt++ {
		e, err := launchEtcd(ctx, bin)
		if err == nil {
			return e, nil
		}
		// A port seen free a moment ago may have been taken since.
		if attempt == 2 || !strings.Contains(err.Error(), "address already in use") {
			return nil, err
		}
	}
}

func launchEtcd(ctx context.Context, bin string) (*localEtcd, error) {
	dir, err := os.MkdirTemp("", "microlock-demo-")
	if err != nil {
		return nil, err
	}
	ports, err := freePorts(2)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	client := "http://127.0.0.1:" + ports[0]
	peer := "http://127.0.0.1:" + ports[1]
	logPath := filepath.Join(dir, "etcd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command(bin,
		"--name", "demo",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "demo="+peer,
		"--log-level", "error",
		// The data is thrown away at the end; syncing it only costs time.
		"--unsafe-no-fsync",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = groupLeaderAttr()
	err = cmd.Start()
	logf.Close() // etcd has its own descriptor
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	e := &localEtcd{cmd: cmd, dir: dir, endpoint: client, exited: make(chan struct{})}
	go func() {
		defer close(e.exited)
		_ = cmd.Wait() // the log says why it ended
	}()
	if err := e.waitServing(ctx, logPath); err != nil {
		e.stop()
		return nil, err
	}
	return e, nil
}

// waitServing polls etcd until it serves a linearizable read, for at most
// 30 s.
func (e *localEtcd) waitServing(ctx context.Context, logPath string) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.endpoint}, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		tctx, tcancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Get(tctx, "microlock-demo/probe")
		tcancel()
		if err == nil {
			return nil
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-e.exited:
			t.Stop()
			return fmt.Errorf("etcd exited; its log:\n%s", tailFile(logPath, 20))
		case <-ctx.Done():
			t.Stop()
			if context.Cause(ctx) != ctx.Err() {
				return context.Cause(ctx)
			}
			return fmt.Errorf("etcd did not serve within 30s: %v; its log:\n%s", err, tailFile(logPath, 20))
		case <-t.C:
		}
	}
}

// stop kills etcd, waits for it and removes its directory.
func (e *localEtcd) stop() {
	select {
	case <-e.exited:
	default:
		_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
		<-e.exited
	}
	_ = os.RemoveAll(e.dir)
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]string, error) {
	var ports []string
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

func tailFile(path string, n int) string {
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
