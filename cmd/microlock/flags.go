//go:build unix

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The standard library's flag package, with three conventions on top: flags
// are shown as --name, like etcdctl's; flags may come after the positional
// arguments (holder KEY --json); and "--" ends the flags, so that run can
// take a command with flags of its own.

// newFlagSet returns a flag set that reports errors to its caller and prints
// nothing by itself.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
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

// parse parses flags anywhere before the first "--". It returns
// flag.ErrHelp for -h, -help and --help, and a usage error for anything
// else it cannot parse.
func parse(fs *flag.FlagSet, args []string) (parsed, error) {
	var p parsed
	before := args
	if i := slices.Index(args, "--"); i >= 0 {
		before, p.rest, p.hasDash = args[:i], args[i+1:], true
	}
	for {
		if err := fs.Parse(before); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return p, err
			}
			return p, usageErrorf("%s: %s", fs.Name(), dashDash(err.Error()))
		}
		before = fs.Args()
		if len(before) == 0 {
			return p, nil
		}
		p.args = append(p.args, before[0])
		before = before[1:]
	}
}

// dashDash rewrites the flag package's "-name" in its messages as
// "--name", the way the help spells flags.
func dashDash(msg string) string {
	for _, before := range []string{"flag -", "for -", ": -"} {
		msg = strings.Replace(msg, before, before[:len(before)-1]+"--", 1)
	}
	return msg
}

// isSet reports whether the flag name was given on the command line.
func isSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
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
func (h help) print(w io.Writer, fs *flag.FlagSet) {
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
func flagLines(fs *flag.FlagSet, include func(string) bool) string {
	var b strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		if !include(f.Name) {
			return
		}
		arg, usage := flag.UnquoteUsage(f)
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
