//go:build unix

// Command microlock runs a command under a distributed lock in etcd, shows
// and watches who holds a lock, runs a command whenever this node leads an
// election, breaks a stuck hold, and demonstrates the microlock library.
//
//	microlock run [flags] KEY -- CMD [ARGS...]
//	microlock holder [flags] KEY
//	microlock list [flags] PREFIX
//	microlock watch [flags] KEY
//	microlock elect [flags] KEY -- CMD [ARGS...]
//	microlock elect --listen [flags] KEY
//	microlock break [flags] KEY
//	microlock demo [flags]
//
// Locks are those of the microlock library, which are also those of etcd's
// concurrency.Mutex and etcdctl lock: all of them exclude each other on the
// same KEY. Run "microlock help" for more.
//
// microlock needs a Unix: it runs commands in process groups and stops them
// with signals.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/pflag"
)

func main() {
	c := &cli{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	os.Exit(c.main(os.Args[1:]))
}

// cli is what the commands print to and read their environment from.
type cli struct {
	stdin          *os.File // break asks for confirmation on it when it is a terminal
	stdout, stderr io.Writer
	getenv         func(string) string
}

const overview = `microlock runs commands under a lock in etcd: one holder at a time per key,
across processes and machines.

Usage:
  microlock run [flags] KEY -- CMD [ARGS...]   run CMD while holding the lock KEY
  microlock holder [flags] KEY                 show who holds KEY
  microlock list [flags] PREFIX                list every lock held under PREFIX
  microlock watch [flags] KEY                  print every change of KEY's holder
  microlock elect [flags] KEY -- CMD [ARGS...] run CMD each time this node leads KEY
  microlock elect --listen [flags] KEY         print every change of KEY's leader
  microlock break [flags] KEY                  end the current hold on KEY (a last resort)
  microlock demo [flags]                       watch the lock at work on a local etcd
  microlock help [COMMAND]                     show a command's help

Run "microlock COMMAND --help" for its flags, examples and exit codes.
`

// command is one subcommand: it parses its own arguments.
type command func(c *cli, args []string) error

func commands() map[string]command {
	return map[string]command{
		"run":    (*cli).run,
		"holder": (*cli).holder,
		"list":   (*cli).list,
		"watch":  (*cli).watch,
		"elect":  (*cli).elect,
		"break":  (*cli).breakLock,
		"demo":   (*cli).demo,
	}
}

// main runs the command line args and returns the exit code.
func (c *cli) main(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, overview)
		return exitUsage
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(rest) == 0 {
			fmt.Fprint(c.stdout, overview)
			return exitOK
		}
		name, rest = rest[0], []string{"--help"}
	}
	cmd, ok := commands()[name]
	if !ok {
		fmt.Fprintf(c.stderr, "microlock: unknown command %q\n\n%s", name, overview)
		return exitUsage
	}
	err := cmd(c, rest)
	if errors.Is(err, pflag.ErrHelp) {
		return exitOK
	}
	var ee *exitError
	if err != nil && !(errors.As(err, &ee) && ee.err == nil) {
		fmt.Fprintln(c.stderr, err)
		if exitCode(err) == exitUsage {
			fmt.Fprintf(c.stderr, "Run \"microlock %s --help\" for usage.\n", name)
		}
	}
	return exitCode(err)
}

// parseOrHelp parses args into fs, and prints h on --help, returning
// pflag.ErrHelp.
func (c *cli) parseOrHelp(fs *pflag.FlagSet, args []string, h help) (parsed, error) {
	p, err := parse(fs, args)
	if errors.Is(err, pflag.ErrHelp) {
		h.print(c.stdout, fs)
	}
	return p, err
}
