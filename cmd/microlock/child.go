//go:build unix

package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// child is the command that run runs, the leader of its own process group:
// signals go to the whole group, so that a shell script's children are
// stopped with it. On Linux the child is not reaped until reap is called,
// so its process group ID cannot be reused by another process while run
// may still signal it.
type child struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed once the child has exited
	waitFn func() error  // reaps the child
}

// startChild starts cmd in a new process group.
func startChild(cmd *exec.Cmd) (*child, error) {
	cmd.SysProcAttr = groupLeaderAttr()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	ch := &child{cmd: cmd, exited: make(chan struct{})}
	ch.waitFn = watchExit(cmd, ch.exited)
	return ch, nil
}

// signal sends sig to the child's process group. Before reap, the group ID
// is still the child's, even if the child itself has exited.
func (ch *child) signal(sig syscall.Signal) {
	_ = syscall.Kill(-ch.cmd.Process.Pid, sig)
}

// reap waits for the child, which must have exited, and returns its exit
// status as a shell reports it: the exit code, or 128+N when signal N
// killed it.
func (ch *child) reap() int {
	<-ch.exited
	err := ch.waitFn()
	st := ch.cmd.ProcessState
	if st == nil { // the wait itself failed: no status to pass on
		fmt.Fprintf(os.Stderr, "microlock: waiting for the command: %v\n", err)
		return exitFailure
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}
