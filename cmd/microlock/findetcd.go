//go:build unix

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The demo starts its etcd with internal/etcdtest, the tests' launcher; this
// file only picks the binary, as a user would expect of an installed tool.

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
