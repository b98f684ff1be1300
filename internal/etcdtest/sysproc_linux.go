package etcdtest

import "syscall"

// sysProcAttr puts etcd in its own process group, so that signals meant for
// the test (Ctrl-C, Ctrl-Z) do not also reach it behind the harness's back
// (a stray SIGTSTP would look like Pause), and asks the kernel to SIGKILL it
// when the test process dies without running Cleanup. The kernel ties
// Pdeathsig to the forking thread, and the Go runtime does not retire threads
// unless a goroutine exits while locked to one, which the harness never does.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
