package main

import (
	"errors"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// groupLeaderAttr starts a process as the leader of a new process group,
// and has the kernel SIGKILL it if microlock dies without stopping it
// (SIGKILL, an OOM kill): a command must not outlive the lock it runs
// under. The kernel ties Pdeathsig to the thread that forked; the Go
// runtime keeps its threads unless a goroutine exits while locked to one,
// which microlock never does.
func groupLeaderAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// watchExit closes exited when cmd's process exits, without reaping it:
// waitid with WNOWAIT leaves it a zombie, which keeps its PID and process
// group ID from being reused until the returned func reaps it.
func watchExit(cmd *exec.Cmd, exited chan<- struct{}) (reap func() error) {
	pid := cmd.Process.Pid
	go func() {
		defer close(exited)
		var info unix.Siginfo
		for {
			err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
			if !errors.Is(err, syscall.EINTR) {
				return
			}
		}
	}()
	return cmd.Wait
}
