package chaos_test

import "syscall"

// workerSysProcAttr puts a worker in its own process group, so that a
// terminal's Ctrl-C or Ctrl-Z reaches only the test, and has the kernel kill
// it if the test dies without cleaning up: a worker stopped with SIGSTOP
// would otherwise never read the end of its input. The kernel ties
// Pdeathsig to the thread that forked, which the Go runtime keeps.
func workerSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
