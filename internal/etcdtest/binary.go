package etcdtest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
)

// binary is an executable built on first use from the tools module, which
// pins the etcd version; the root module only ever depends on the client.
type binary struct {
	env  string // environment variable that overrides the build
	name string // file name under <repo>/bin
	pkg  string // main package in the tools module

	once sync.Once
	path string
	err  error
}

var (
	etcdBin    = &binary{env: "MICROLOCK_ETCD", name: "etcd", pkg: "go.etcd.io/etcd/server/v3"}
	etcdctlBin = &binary{env: "MICROLOCK_ETCDCTL", name: "etcdctl", pkg: "go.etcd.io/etcd/etcdctl/v3"}
)

// EtcdBinary returns the path of the etcd server executable: $MICROLOCK_ETCD
// if set, otherwise <repo>/bin/etcd, built from <repo>/tools at most once per
// process. Concurrent test binaries may build at the same time; each builds
// into its own temporary file and renames it into place, so none of them ever
// executes a half-written file.
func EtcdBinary() (string, error) { return etcdBin.get() }

// EtcdctlBinary is EtcdBinary for etcdctl ($MICROLOCK_ETCDCTL,
// <repo>/bin/etcdctl).
func EtcdctlBinary() (string, error) { return etcdctlBin.get() }

func (b *binary) get() (string, error) {
	if p := os.Getenv(b.env); p != "" {
		return p, nil
	}
	b.once.Do(func() { b.path, b.err = b.build() })
	return b.path, b.err
}

func (b *binary) build() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", fmt.Errorf("%v; set %s to an %s binary", err, b.env, b.name)
	}
	binDir := filepath.Join(root, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return "", err
	}
	// A private directory rather than a temporary file: go build refuses to
	// overwrite an existing file that is not an executable.
	tmp, err := os.MkdirTemp(binDir, ".build-"+b.name+"-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, b.name)
	cmd := exec.Command("go", "build", "-o", out, b.pkg)
	cmd.Dir = filepath.Join(root, "tools")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building %s: %v\n%s", b.name, err, msg)
	}
	dst := filepath.Join(binDir, b.name)
	if err := os.Rename(out, dst); err != nil {
		return "", err
	}
	return dst, nil
}

// repoRoot finds the repository from this source file's path, which is
// <repo>/internal/etcdtest/binary.go.
func repoRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		return "", errors.New("cannot locate the repository from the source path (built with -trimpath?)")
	}
	return filepath.Dir(filepath.Dir(filepath.Dir(file))), nil
}
