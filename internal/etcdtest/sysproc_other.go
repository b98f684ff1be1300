//go:build !linux

package etcdtest

import "syscall"

// sysProcAttr puts etcd in its own process group; see the Linux version,
// which also kills etcd when the test process dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
