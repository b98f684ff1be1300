//go:build unix

package main

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Flags are parsed by pflag, as etcdctl's are: --name, flags before or
// after the positional arguments (holder KEY --json), and "--" ends the
// flags, so that run can take a command with flags of its own.

// newFlagSet returns a flag set that reports errors to its caller and prints
// nothing by itself.
func newFlagSet(name string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parsed is a command line split by parse.
type parsed struct {
	args    []string // positional arguments before "--"
	rest    []string // everything after "--"
	hasDash bool     // whether there was a "--"
}

// parse parses the flags in args. It returns pflag.ErrHelp for -h and
// --help, and a usage error for anything else it cannot parse.
func parse(fs *pflag.FlagSet, args []string) (parsed, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return parsed{}, err
		}
		return parsed{}, usageErrorf("%s: %v", fs.Name(), err)
	}
	p := parsed{args: fs.Args()}
	if at := fs.ArgsLenAtDash(); at >= 0 {
		p.args, p.rest, p.hasDash = p.args[:at], p.args[at:], true
	}
	return p, nil
}

// durationFlag is a time.Duration flag that also takes a bare number of
// seconds, as etcdctl's --ttl does ("10" is "10s"). It refuses negative
// values.
type durationFlag struct{ d *time.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return ""
	}
	return f.d.String()
}

// Type names the flag's value in pflag's messages.
func (f durationFlag) Type() string { return "duration" }

func (f durationFlag) Set(s string) error {
	var d time.Duration
	if n, err := strconv.ParseFloat(s, 64); err == nil {
		d = time.Duration(n * float64(time.Second))
	} else if d, err = time.ParseDuration(s); err != nil {
		return errors.New("not a duration (examples: 10s, 500ms, 2m, or 10 for seconds)")
	}
	if d < 0 {
		return errors.New("negative duration")
	}
	*f.d = d
	return nil
}

// help is what a command's --help prints, around its flags.
type help struct {
	usage    string // the synopsis line
	about    string // what the command does, paragraphs
	examples string
	extra    string // more sections after the examples, if any
	connNote string // the connection flags' heading, if not the usual one
}

// print writes the help for fs: synopsis, description, the command's own
// flags, then the connection flags, the examples and any extra sections.
func (h help) print(w io.Writer, fs *pflag.FlagSet) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", h.usage, strings.TrimSpace(h.about))
	own := flagLines(fs, func(name string) bool { return !isConnFlag(name) })
	if own != "" {
		fmt.Fprintf(w, "\nFlags:\n%s", own)
	}
	if conn := flagLines(fs, isConnFlag); conn != "" {
		note := h.connNote
		if note == "" {
			note = "Connection flags, as in etcdctl (each also read from ETCDCTL_<NAME>, for example\nETCDCTL_ENDPOINTS or ETCDCTL_DIAL_TIMEOUT, when not given as a flag):"
		}
		fmt.Fprintf(w, "\n%s\n%s", note, conn)
	}
	if h.examples != "" {
		fmt.Fprintf(w, "\nExamples:\n%s\n", strings.TrimRight(h.examples, "\n"))
	}
	if h.extra != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimSpace(h.extra))
	}
}

// flagLines lists the flags of fs that include accepts, one per line, with
// their argument name and default.
func flagLines(fs *pflag.FlagSet, include func(string) bool) string {
	var b strings.Builder
	fs.VisitAll(func(f *pflag.Flag) {
		if !include(f.Name) {
			return
		}
		arg, usage := pflag.UnquoteUsage(f)
		left := "  --" + f.Name
		if arg != "" && arg != "value" {
			left += " " + arg
		}
		if len(left) < 32 {
			left += strings.Repeat(" ", 32-len(left))
		} else {
			left += "\n" + strings.Repeat(" ", 32)
		}
		switch f.DefValue {
		case "", "0", "0s", "false":
		default:
			usage += " (default " + f.DefValue + ")"
		}
		b.WriteString(left + usage + "\n")
	})
	return b.String()
}
