package microlock_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/microlock/microlock"
)

// buildCLI builds the microlock command into the test's temporary directory.
func buildCLI(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join("cmd", "microlock")); err != nil {
		t.Skipf("no command-line tool to test: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "microlock")
	out, err := exec.Command("go", "build", "-o", bin, "./cmd/microlock").CombinedOutput()
	if err != nil {
		t.Fatalf("building cmd/microlock: %v\n%s", err, out)
	}
	return bin
}

// runCLI runs the command to completion and returns its output and status.
func runCLI(t *testing.T, bin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running microlock %s: %v", strings.Join(args, " "), err)
	}
	return o.String(), e.String(), code
}

// cliHolder is the part of `microlock holder --json` the tests read.
type cliHolder struct {
	Locked          bool   `json:"locked"`
	Holder          string `json:"holder"`
	HolderBytes     int    `json:"holder_bytes"`
	HolderTruncated bool   `json:"holder_truncated"`
	Token           int64  `json:"token"`
}

// TestCLIOverTLS: the command-line tool's `run` and `holder` work against
// an etcd that requires client certificates, given --cacert, --cert and
// --key; with a CA that did not sign the server's certificate they fail
// with a microlock: message; and a foreign 1 MiB value under the lock's
// prefix is reported cut short, not poured onto the terminal.
func TestCLIOverTLS(t *testing.T) {
	bin := buildCLI(t)
	s := startTLS(t)
	key := testKey(t)
	conn := []string{"--endpoints", s.c.Endpoints()[0], "--cacert", s.ca.CAFile,
		"--cert", s.client.CertFile, "--key", s.client.KeyFile, "--dial-timeout", "2s", "--command-timeout", "5s"}
	holder := func(t *testing.T) cliHolder {
		t.Helper()
		out, errOut, code := runCLI(t, bin, append(append([]string{"holder", "--json"}, conn...), key)...)
		var h cliHolder
		if code != 0 || json.Unmarshal([]byte(out), &h) != nil {
			t.Fatalf("holder --json: exit %d, stdout %.500q, stderr %.500q", code, out, errOut)
		}
		return h
	}
	if h := holder(t); h.Locked {
		t.Fatalf("holder of a free key: %+v", h)
	}

	release := filepath.Join(t.TempDir(), "release")
	run := exec.Command(bin, append(append(append([]string{"run", "--node-id", "cli-node"}, conn...), key),
		"--", "sh", "-c", `echo "$MICROLOCK_TOKEN"; while [ ! -e "$1" ]; do sleep 0.02; done`, "sh", release)...)
	out := &firstLine{seen: make(chan struct{})}
	var errOut bytes.Buffer
	run.Stdout, run.Stderr = out, &errOut
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	t.Cleanup(func() {
		_ = run.Process.Kill()
		<-exited
	})
	select {
	case <-out.seen:
	case err := <-exited:
		t.Fatalf("microlock run exited before its command started: %v: %s", err, errOut.String())
	case <-time.After(20 * time.Second):
		t.Fatal("microlock run's command did not start in 20 s")
	}
	out.mu.Lock()
	token, err := strconv.ParseInt(strings.TrimSpace(out.buf.String()), 10, 64)
	out.mu.Unlock()
	if err != nil || token <= 0 {
		t.Fatalf("MICROLOCK_TOKEN in the command: %q, %v", out.buf.String(), err)
	}
	if h := holder(t); !h.Locked || h.Holder != "cli-node" || h.Token != token {
		t.Fatalf("holder while run holds: %+v, want cli-node with token %d", h, token)
	}
	var ale *microlock.AlreadyLockedError
	if err := newMutex(t, s.c.Client(t), key).TryLock(ctxTimeout(t, 5*time.Second)); !errors.As(err, &ale) || ale.Holder != "cli-node" || ale.Token != token {
		t.Fatalf("library TryLock while run holds = %v, want *AlreadyLockedError naming cli-node", err)
	}
	if err := os.WriteFile(release, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("microlock run: %v: %s", err, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("microlock run did not exit after its command did")
	}
	if h := holder(t); h.Locked {
		t.Fatalf("holder after run exited: %+v", h)
	}

	t.Run("wrong CA", func(t *testing.T) {
		other := newPKI(t, "someone-else")
		args := append([]string{}, conn...)
		args[3] = other.CAFile // --cacert
		args = append(args, "--command-timeout", "2s")
		start := time.Now()
		stdout, stderr, code := runCLI(t, bin, append(append([]string{"holder"}, args...), key)...)
		t.Logf("holder with the wrong CA: exit %d after %v, stderr: %s", code, time.Since(start).Round(time.Millisecond), strings.TrimSpace(stderr))
		if code == 0 || !strings.HasPrefix(stderr, "microlock: ") || stdout != "" {
			t.Fatalf("holder with the wrong CA: exit %d, stdout %q, stderr %q; want a failure with a microlock: message", code, stdout, stderr)
		}
	})

	t.Run("insecure-skip-tls-verify", func(t *testing.T) {
		// No --cacert: the server's certificate is not checked, and the
		// client certificate still gets the connection past etcd.
		args := []string{"holder", "--json", "--endpoints", s.c.Endpoints()[0], "--insecure-skip-tls-verify",
			"--cert", s.client.CertFile, "--key", s.client.KeyFile, "--command-timeout", "5s", key}
		stdout, stderr, code := runCLI(t, bin, args...)
		var h cliHolder
		if code != 0 || json.Unmarshal([]byte(stdout), &h) != nil || h.Locked {
			t.Fatalf("holder --insecure-skip-tls-verify: exit %d, stdout %q, stderr %q; want a free key", code, stdout, stderr)
		}
		// Without a client certificate etcd refuses the connection.
		stdout, stderr, code = runCLI(t, bin, "holder", "--endpoints", s.c.Endpoints()[0], "--insecure-skip-tls-verify",
			"--command-timeout", "2s", key)
		if code == 0 || !strings.HasPrefix(stderr, "microlock: ") || stdout != "" {
			t.Fatalf("holder without a client certificate: exit %d, stdout %q, stderr %q; want a failure", code, stdout, stderr)
		}
	})

	t.Run("foreign huge value", func(t *testing.T) {
		cli := s.c.Client(t)
		ctx := ctxTimeout(t, 10*time.Second)
		if _, err := cli.Put(ctx, key+"/foreign", strings.Repeat("\x1b[J\xff", 1<<18)); err != nil {
			t.Fatal(err)
		}
		defer cli.Delete(ctx, key+"/foreign")
		h := holder(t)
		// The shown part is cut at MaxNodeIDLen bytes; JSON then turns each
		// invalid byte into a three-byte U+FFFD.
		if !h.Locked || !h.HolderTruncated || h.HolderBytes != 1<<20 || len(h.Holder) > 3*microlock.MaxNodeIDLen {
			t.Fatalf("holder --json of a 1 MiB foreign value: locked %v, truncated %v, %d bytes reported, %d shown",
				h.Locked, h.HolderTruncated, h.HolderBytes, len(h.Holder))
		}
		stdout, stderr, code := runCLI(t, bin, append(append([]string{"holder"}, conn...), key)...)
		if code != 0 || len(stdout) > 64<<10 || strings.Contains(stdout, "\x1b") {
			t.Fatalf("holder of a 1 MiB foreign value: exit %d, %d bytes of output (raw escapes: %v), stderr %.300q",
				code, len(stdout), strings.Contains(stdout, "\x1b"), stderr)
		}
	})
}
