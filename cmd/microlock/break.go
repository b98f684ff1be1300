//go:build unix

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
)

func breakHelp() help {
	return help{
		usage: "microlock break [flags] KEY",
		about: `
Break the lock KEY: delete its holder's key, so that the holder no longer
holds it and the next in line (if any) gets it. This is an operator's last
resort, for a holder that is stuck yet still renews its lease; a holder that
died frees the lock by itself when its lease expires.

break reads the holder (the key under KEY/ with the smallest create
revision) and deletes that key only if it still has the create revision it
read: a holder that came later is never broken. If the holder changed
before the delete, break says so, deletes nothing and exits with 75.

A holder that uses microlock (run, or the library) watches its key and learns
at once that it lost the lock: run stops its command as it does when the
lock is lost (SIGTERM, then SIGKILL after --grace) and exits with 76; the
library cancels the work's context with ErrLockLost. etcd's
concurrency.Mutex and etcdctl lock do not watch their key: such a holder
goes on as if it held the lock, and only fencing tokens can stop its writes.

Without --force, break shows the holder and asks for confirmation (y/N) when
its standard input is a terminal, and refuses with exit code 77 otherwise.`,
		examples: `  microlock break jobs/nightly-report
  microlock break --force --json jobs/nightly-report | jq .token`,
		extra: `JSON fields, printed only when a hold was broken (exit code 0): key,
holder, holder_bytes, holder_truncated, token (the broken hold's fencing
token: the create revision of its key) and revision (the cluster revision at
which its key was deleted).

Exit codes:
  0      the hold was broken; stdout says whose
  1      other error (etcd refused the request, unreadable TLS files, ...)
  64     usage error
  69     etcd unreachable or timed out
  75     the holder changed between reading it and deleting its key: nothing
         was deleted; run break again to see the new holder
  77     not confirmed: no --force, and standard input is not a terminal or
         the answer was not y; nothing was deleted
  79     KEY is free: nothing to break
  128+N  stopped by signal N (130 for SIGINT) before anything was deleted`,
	}
}

func (c *cli) breakLock(args []string) error {
	fs := newFlagSet("break")
	conn := addConnFlags(fs)
	force := fs.Bool("force", false, "break without asking")
	asJSON := fs.Bool("json", false, "print one JSON object")
	key, client, err := c.argAndClient("break", "KEY", fs, conn, args, breakHelp())
	if err != nil {
		return err
	}
	defer client.Close()

	ctx, stop := onSignals(context.Background())
	defer stop()
	rctx, cancel := context.WithTimeout(ctx, conn.commandTimeout)
	st, err := readState(rctx, client, key)
	cancel()
	if err != nil {
		if ie := interrupted(ctx); ie != nil {
			return ie
		}
		return etcdError(fmt.Errorf("microlock: break: reading %q from etcd at %s: %w", key, conn.endpoints, err))
	}
	if !st.locked {
		return &exitError{code: exitFree, err: fmt.Errorf("microlock: break: %s is free (cluster revision %d): nothing to break", strconv.Quote(key), st.revision)}
	}
	if err := c.mayBreak(ctx, *force, st); err != nil {
		return err
	}
	// Not cancelled by a signal: once sent, the delete may land, so break
	// waits for etcd's answer to say what happened.
	dctx, dcancel := context.WithTimeout(context.Background(), conn.commandTimeout)
	defer dcancel()
	res, err := breakHold(dctx, client, key, st.holderKey, st.token)
	if err != nil {
		return etcdError(fmt.Errorf("microlock: break: deleting the key of %s's holder %s (token %d) on etcd at %s: %w; "+
			"it may or may not have been deleted: see microlock holder", strconv.Quote(key), quoted(st.holder), st.token, conn.endpoints, err))
	}
	if !res.broken {
		now := "it is free now"
		if res.now.locked {
			now = fmt.Sprintf("it is now held by %s (token %d)", quoted(res.now.holder), res.now.token)
		}
		return &exitError{code: exitHolderChanged, err: fmt.Errorf("microlock: break: the holder of %s changed: %s (token %d) no longer holds it; %s. Nothing was deleted",
			strconv.Quote(key), quoted(st.holder), st.token, now)}
	}
	if *asJSON {
		return writeBrokenJSON(c.stdout, key, st.holder, st.token, res.revision)
	}
	fmt.Fprintf(c.stdout, "broke %s: deleted the key of its holder %s (token %d) at revision %d\n",
		strconv.Quote(key), quoted(st.holder), st.token, res.revision)
	return nil
}

// mayBreak returns nil when break may go ahead: with --force, or when the
// user says yes on the terminal, unless a signal came meanwhile.
func (c *cli) mayBreak(ctx context.Context, force bool, st lockState) error {
	if !force {
		if !c.stdinIsTerminal() {
			return &exitError{code: exitNotConfirmed, err: fmt.Errorf(
				"microlock: break: not breaking %s, held by %s (token %d), without confirmation: "+
					"standard input is not a terminal to ask on; give --force to break it", strconv.Quote(st.key), quoted(st.holder), st.token)}
		}
		ok, err := c.confirm(ctx, st)
		if err != nil {
			return err
		}
		if !ok {
			return &exitError{code: exitNotConfirmed, err: fmt.Errorf("microlock: break: not confirmed; %s was left to its holder", strconv.Quote(st.key))}
		}
	}
	if ie := interrupted(ctx); ie != nil {
		return ie
	}
	return nil
}

// stdinIsTerminal reports whether break can ask for confirmation.
func (c *cli) stdinIsTerminal() bool {
	if c.stdin == nil {
		return false
	}
	_, err := unix.IoctlGetTermios(int(c.stdin.Fd()), ioctlReadTermios)
	return err == nil
}

// confirm shows the hold on stderr and asks whether to break it. Only "y"
// or "yes" confirms. A signal ends the wait for the answer with the
// signal's interruptError; the goroutine reading stdin is then left to the
// process's exit, as a read from a terminal cannot be cancelled.
func (c *cli) confirm(ctx context.Context, st lockState) (bool, error) {
	st.writeText(c.stderr)
	fmt.Fprint(c.stderr, "Break this hold? Its holder loses the lock, and the next in line gets it. [y/N] ")
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(c.stdin).ReadString('\n')
		answer <- line
	}()
	select {
	case line := <-answer:
		switch strings.ToLower(strings.TrimSpace(line)) {
		case "y", "yes":
			return true, nil
		}
		if !strings.HasSuffix(line, "\n") {
			fmt.Fprintln(c.stderr) // end of input: end the prompt's line
		}
		return false, nil
	case <-ctx.Done():
		fmt.Fprintln(c.stderr)
		return false, interrupted(ctx)
	}
}

// breakResult is what breakHold did.
type breakResult struct {
	broken   bool
	revision int64     // the cluster revision after the request
	now      lockState // when not broken: the lock as it is now (holder, token)
}

// breakHold deletes holderKey, the key of key's holder, if its create
// revision is still token: a key of the same name created again since then
// is another hold, and so is any other key that is now first under key's
// prefix (it was created later than holderKey, whose create revision was
// the smallest). In one request, it reads the lock's holder when the guard
// fails, to say who holds it now.
func breakHold(ctx context.Context, client *clientv3.Client, key string, holderKey []byte, token int64) (breakResult, error) {
	hk := string(holderKey)
	resp, err := client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(hk), "=", token)).
		Then(clientv3.OpDelete(hk)).
		Else(clientv3.OpGet(key+"/", clientv3.WithFirstCreate()...)).
		Commit()
	if err != nil {
		return breakResult{}, err
	}
	res := breakResult{broken: resp.Succeeded, revision: resp.Header.Revision}
	if !resp.Succeeded {
		res.now = lockState{key: key, revision: resp.Header.Revision}
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			res.now.locked, res.now.holder, res.now.token = true, kvs[0].Value, kvs[0].CreateRevision
		}
	}
	return res, nil
}

type brokenJSON struct {
	Key             string `json:"key"`
	Holder          string `json:"holder"`
	HolderBytes     int    `json:"holder_bytes"`
	HolderTruncated bool   `json:"holder_truncated"`
	Token           int64  `json:"token"`
	Revision        int64  `json:"revision"`
}

func writeBrokenJSON(w io.Writer, key string, holder []byte, token, revision int64) error {
	h, cut := clip(holder)
	return json.NewEncoder(w).Encode(brokenJSON{
		Key:             key,
		Holder:          h,
		HolderBytes:     len(holder),
		HolderTruncated: cut,
		Token:           token,
		Revision:        revision,
	})
}
