//go:build unix

package main

import (
	"strings"
	"testing"
	"time"
)

// TestUsage: bad command lines get exit code 64 and a message that says
// what is wrong, never a stack trace; --help works on every command.
func TestUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "Usage:"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"run"}, "missing KEY"},
		{[]string{"run", "k"}, `missing "--"`},
		{[]string{"run", "k", "--"}, "missing the command"},
		{[]string{"run", "a", "b", "--", "true"}, "one KEY expected"},
		{[]string{"run", "--bogus", "k", "--", "true"}, "unknown flag: --bogus"},
		{[]string{"run", "--ttl", "500ms", "k", "--", "true"}, "below the minimum"},
		{[]string{"run", "--ttl", "soon", "k", "--", "true"}, `invalid argument "soon" for "--ttl" flag: not a duration`},
		{[]string{"run", "--ttl"}, "flag needs an argument: --ttl"},
		{[]string{"holder", "-json", "k"}, "unknown shorthand flag"},
		{[]string{"run", "--grace", "2s", "k", "--", "true"}, "--grace can be at most 900ms; use --ttl 21s or more"},
		{[]string{"run", "--ttl", "2s", "--grace", "200ms", "k", "--", "true"}, "at most 150ms"},
		{[]string{"run", "--no-wait", "--wait-timeout", "1s", "k", "--", "true"}, "no use with --no-wait"},
		{[]string{"run", "--node-id", " ", "k", "--", "true"}, "empty node ID"},
		{[]string{"run", "--user", "alice", "k", "--", "true"}, "has no password"},
		{[]string{"run", "--cert", "c.pem", "k", "--", "true"}, "--cert and --key go together"},
		{[]string{"run", "--endpoints", " , ", "k", "--", "true"}, "no etcd endpoints"},
		{[]string{"holder"}, "missing KEY"},
		{[]string{"holder", "a", "b"}, "one KEY expected"},
		{[]string{"break"}, "missing KEY"},
		{[]string{"break", "--force", "a", "b"}, "one KEY expected"},
		{[]string{"break", "--force", ""}, "empty KEY"},
		{[]string{"break", "--force=maybe", "k"}, `invalid argument "maybe" for "--force" flag`},
		{[]string{"watch", "--json=maybe", "k"}, `invalid argument "maybe" for "--json" flag`},
		{[]string{"demo", "extra"}, "takes no arguments"},
		{[]string{"demo", "--etcd-binary", "/nonexistent/etcd"}, "--etcd-binary /nonexistent/etcd"},
	} {
		code, stdout, stderr := runMicrolock(t, tc.args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("microlock %q: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, exitUsage, tc.want)
		}
		if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") || stdout != "" {
			t.Errorf("microlock %q printed a stack trace or wrote to stdout:\n%s%s", tc.args, stdout, stderr)
		}
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"help"}, {"--help"}, {"-h"},
		{"run", "--help"}, {"holder", "-h"}, {"watch", "--help"}, {"demo", "--help"}, {"help", "run"},
		{"break", "--help"}, {"help", "break"},
		{"run", "k", "--help", "--", "true"},
	} {
		code, stdout, stderr := runMicrolock(t, args...)
		if code != 0 || stderr != "" || !strings.Contains(stdout, "Usage") {
			t.Errorf("microlock %q: exit %d, stderr %q, stdout:\n%s", args, code, stderr, stdout)
		}
		if len(args) > 1 && args[0] != "help" && !strings.Contains(stdout, "Examples:") {
			t.Errorf("microlock %q has no examples:\n%s", args, stdout)
		}
	}
	for cmd, wants := range map[string][]string{
		"run":    {"--endpoints", "ETCDCTL_ENDPOINTS", "--no-wait", "--grace", "Exit codes:", "76 "},
		"holder": {"since (", "revision (", "--json"},
		"break":  {"--force", "--json", "Exit codes:", "75 ", "77 ", "79 ", "--endpoints"},
		"help":   {"microlock break"},
	} {
		args := []string{cmd, "--help"}
		if cmd == "help" {
			args = args[:1]
		}
		_, stdout, _ := runMicrolock(t, args...)
		for _, want := range wants {
			if !strings.Contains(stdout, want) {
				t.Errorf("microlock %q lacks %q", args, want)
			}
		}
	}
}

// TestEnvironment: the ETCDCTL_* variables are read as etcdctl reads them,
// and a flag given on the command line wins.
func TestEnvironment(t *testing.T) {
	t.Parallel()
	env := []string{"ETCDCTL_ENDPOINTS=" + strings.Join(shared.Endpoints(), ",")}
	p := start(t, env, "holder", testKey(t))
	if code := p.wait(30 * time.Second); code != 0 || !strings.Contains(p.stdout.String(), "is free") {
		t.Fatalf("holder with ETCDCTL_ENDPOINTS: exit %d\n%s%s", code, p.stdout.String(), p.stderr.String())
	}
	p = start(t, []string{"ETCDCTL_ENDPOINTS=127.0.0.1:1", "ETCDCTL_COMMAND_TIMEOUT=500ms"}, "holder", endpointsFlag(), testKey(t))
	if code := p.wait(30 * time.Second); code != 0 {
		t.Fatalf("--endpoints did not win over ETCDCTL_ENDPOINTS: exit %d\n%s", code, p.stderr.String())
	}
	p = start(t, []string{"ETCDCTL_DIAL_TIMEOUT=soon"}, "holder", endpointsFlag(), testKey(t))
	if code := p.wait(30 * time.Second); code != exitUsage || !strings.Contains(p.stderr.String(), "ETCDCTL_DIAL_TIMEOUT") {
		t.Fatalf("a bad ETCDCTL_DIAL_TIMEOUT: exit %d\n%s", code, p.stderr.String())
	}
}
