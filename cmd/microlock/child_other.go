//go:build unix && !linux

package main

import (
	"os/exec"
	"syscall"
)

// groupLeaderAttr starts a process as the leader of a new process group.
func groupLeaderAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// watchExit reaps cmd's process when it exits and closes exited. Without
// Linux's waitid WNOWAIT the process group ID is free for reuse from then
// on, so a signal to the group after that could, in theory, reach another
// group that took the same ID.
func watchExit(cmd *exec.Cmd, exited chan<- struct{}) (reap func() error) {
	var err error
	go func() {
		defer close(exited)
		err = cmd.Wait()
	}()
	return func() error { return err }
}
