//go:build !linux

package chaos_test

import "syscall"

// workerSysProcAttr puts a worker in its own process group, so that a
// terminal's Ctrl-C or Ctrl-Z reaches only the test.
func workerSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
