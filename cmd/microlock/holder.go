//go:build unix

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

func holderHelp() help {
	return help{
		usage: "microlock holder [flags] KEY",
		about: `
Show who holds the lock KEY: the holder's node ID, its fencing token, since
when it is in line for the lock, its lease, and how many others wait; or
that KEY is free. For a semaphore (run --limit) or a shared lock (run
--shared), it shows how many hold it and lists every holder, the oldest
first; the holder, token, since and lease lines are the oldest's.

"Since" is a revision, not a time: etcd records no wall-clock time for keys.
It is the create revision of the holder's key, which etcd's revision counter
had reached when the holder queued for the lock (it got the lock then, or
later if others held it before), and it is also the holder's fencing token.
The output shows next to it the cluster's revision when it was read, which
every write to etcd advances, not only this lock's. The lease line says how
long the lock survives if its holder stops renewing it.

Values under KEY that are not node IDs (binary data, huge values) are printed
quoted and cut at 4096 bytes.`,
		examples: `  microlock holder jobs/nightly-report
  microlock holder --json jobs/nightly-report | jq -r .holder`,
		extra: `JSON fields: key, locked, holder, holder_bytes, holder_truncated, token,
since (the create revision of the holder's key: the revision at which the
holder queued for the lock; equal to token, 0 when free), revision (the
cluster's revision at which this was read; every write to etcd advances it),
lease (null when free or when the key has no lease; else id,
granted_ttl_seconds, remaining_ttl_seconds, with remaining -1 when etcd no
longer knows the lease), waiting, holders (how many hold KEY: more than
one for a semaphore or a shared lock) and held_by (every holder, the oldest
first, with holder and token).

Exit codes: 0 whether KEY is held or free; 1 other error; 64 usage error;
69 etcd unreachable or timed out.`,
	}
}

func (c *cli) holder(args []string) error {
	fs := newFlagSet("holder")
	conn := addConnFlags(fs)
	asJSON := fs.Bool("json", false, "print one JSON object")
	key, client, err := c.argAndClient("holder", "KEY", fs, conn, args, holderHelp())
	if err != nil {
		return err
	}
	defer client.Close()

	var st lockState
	err = askEtcd(conn, fmt.Sprintf("reading %q", key), func(ctx context.Context) (err error) {
		st, err = readState(ctx, client, key)
		return err
	})
	if err != nil {
		return err
	}
	if *asJSON {
		return st.writeJSON(c.stdout)
	}
	st.writeText(c.stdout)
	return nil
}

// askEtcd runs read, one look at etcd, bounded by --command-timeout and
// ended by SIGINT or SIGTERM: holder's and list's request. doing names it
// in an error (`reading "KEY"`).
func askEtcd(conn *connFlags, doing string, read func(context.Context) error) error {
	ctx, stop := onSignals(context.Background())
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, conn.commandTimeout)
	defer cancel()
	if err := read(ctx); err != nil {
		if ie := interrupted(ctx); ie != nil {
			return ie
		}
		return etcdError(fmt.Errorf("microlock: %s from etcd at %s: %w", doing, conn.endpoints, err))
	}
	return nil
}

// argAndClient parses the flags and the single positional argument (named
// name in errors: KEY, or list's PREFIX) of holder, watch, break and list,
// and connects to etcd.
func (c *cli) argAndClient(cmd, name string, fs *pflag.FlagSet, conn *connFlags, args []string, h help) (string, *clientv3.Client, error) {
	p, err := c.parseOrHelp(fs, args, h)
	if err != nil {
		return "", nil, err
	}
	arg, err := oneArg(cmd, name, p)
	if err != nil {
		return "", nil, err
	}
	client, err := c.connect(fs, conn)
	if err != nil {
		return "", nil, err
	}
	return arg, client, nil
}

// connect applies the environment's connection settings to the flags not
// given, and connects to etcd.
func (c *cli) connect(fs *pflag.FlagSet, conn *connFlags) (*clientv3.Client, error) {
	if err := conn.applyEnv(fs, c.getenv); err != nil {
		return nil, err
	}
	return conn.client()
}

// oneArg returns the single positional argument, named name in errors.
func oneArg(cmd, name string, p parsed) (string, error) {
	args := append(p.args, p.rest...)
	switch {
	case len(args) == 0:
		return "", usageErrorf("%s: missing %s", cmd, name)
	case len(args) > 1:
		return "", usageErrorf("%s: one %s expected, got %d arguments: %q", cmd, name, len(args), args)
	case args[0] == "":
		return "", usageErrorf("%s: empty %s", cmd, name)
	}
	return args[0], nil
}

// lockState is a lock as etcd has it now. The layout is the library's (and
// etcd's concurrency.Mutex's): every key under KEY + "/" is a place in the
// queue, and the one with the smallest create revision holds the lock.
type lockState struct {
	key       string
	holders   []microlock.Holding // every holder, the oldest first: more than one for a semaphore or shared lock
	revision  int64               // the cluster's revision when read
	locked    bool
	holder    []byte // the holder's value: its node ID
	holderKey []byte // the holder's key, under key + "/"
	token     int64  // the holder's create revision
	waiting   int64
	lease     clientv3.LeaseID // 0 for a key without a lease
	granted   int64            // the lease's granted TTL, in seconds
	ttl       int64            // its remaining TTL in seconds; -1 when it is gone
}

// readState reads the lock on key: the first key of its queue, the queue's
// length, the holder's lease and, when more keys are queued, every holder
// (of a semaphore or a shared lock), as the library's Holder tells them.
func readState(ctx context.Context, client *clientv3.Client, key string) (lockState, error) {
	for range 3 {
		st, err := readOnce(ctx, client, key)
		if err != nil || st.waiting == 0 {
			return st, err
		}
		ev, err := microlock.Holder(ctx, client, key)
		if err != nil {
			return st, err
		}
		if ev.Token == st.token { // else the lock changed hands between the reads
			st.holders = ev.HeldBy
			st.waiting = max(st.waiting+1-int64(len(st.holders)), 0)
			return st, nil
		}
	}
	return readOnce(ctx, client, key) // a busy lock: its first holder alone
}

func readOnce(ctx context.Context, client *clientv3.Client, key string) (lockState, error) {
	st := lockState{key: key}
	resp, err := client.Get(ctx, key+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return st, err
	}
	st.revision = resp.Header.Revision
	if len(resp.Kvs) == 0 {
		return st, nil
	}
	kv := resp.Kvs[0]
	st.locked, st.holder, st.holderKey, st.token = true, kv.Value, kv.Key, kv.CreateRevision
	st.holders = []microlock.Holding{{Holder: string(kv.Value), Token: kv.CreateRevision}}
	st.waiting = max(resp.Count-1, 0)
	st.lease = clientv3.LeaseID(kv.Lease)
	if st.lease != 0 {
		lr, err := client.TimeToLive(ctx, st.lease)
		if err != nil {
			return st, err
		}
		st.granted, st.ttl = lr.GrantedTTL, lr.TTL
	}
	return st, nil
}

func (st lockState) writeText(w io.Writer) {
	if !st.locked {
		fmt.Fprintf(w, "%s is free (cluster revision %d)\n", strconv.Quote(st.key), st.revision)
		return
	}
	fmt.Fprintf(w, "%s is locked\n", strconv.Quote(st.key))
	fmt.Fprintf(w, "  holder:   %s\n", quoted(st.holder))
	fmt.Fprintf(w, "  token:    %d\n", st.token)
	fmt.Fprintf(w, "  since:    revision %d; the cluster is at revision %d now (etcd records no wall-clock time for keys)\n", st.token, st.revision)
	switch {
	case st.lease == 0:
		fmt.Fprintf(w, "  lease:    none: the key does not expire, only deleting it frees the lock\n")
	case st.ttl < 0:
		fmt.Fprintf(w, "  lease:    %x, expired: the key is about to go\n", int64(st.lease))
	default:
		fmt.Fprintf(w, "  lease:    %x, expires in %ds unless renewed (granted %ds)\n", int64(st.lease), st.ttl, st.granted)
	}
	fmt.Fprintf(w, "  holders:  %d\n", len(st.holders))
	if len(st.holders) > 1 {
		for _, h := range st.holders {
			fmt.Fprintf(w, "    %s  token %d\n", quoted([]byte(h.Holder)), h.Token)
		}
	}
	fmt.Fprintf(w, "  waiting:  %d\n", st.waiting)
}

type holderJSON struct {
	Key             string     `json:"key"`
	Locked          bool       `json:"locked"`
	Holder          string     `json:"holder"`
	HolderBytes     int        `json:"holder_bytes"`
	HolderTruncated bool       `json:"holder_truncated"`
	Token           int64      `json:"token"`
	Since           int64      `json:"since"`
	Revision        int64      `json:"revision"`
	Lease           *leaseJSON `json:"lease"`
	Waiting         int64      `json:"waiting"`
	Holders         int        `json:"holders"`
	HeldBy          []holdJSON `json:"held_by"`
}

// holdJSON is one holder of a semaphore or a shared lock (or the one holder
// of an exclusive lock).
type holdJSON struct {
	Holder string `json:"holder"`
	Token  int64  `json:"token"`
}

func holdsJSON(hs []microlock.Holding) []holdJSON {
	out := make([]holdJSON, len(hs))
	for i, h := range hs {
		v, _ := clip([]byte(h.Holder))
		out[i] = holdJSON{Holder: v, Token: h.Token}
	}
	return out
}

type leaseJSON struct {
	ID           string `json:"id"`
	GrantedTTL   int64  `json:"granted_ttl_seconds"`
	RemainingTTL int64  `json:"remaining_ttl_seconds"`
}

func (st lockState) writeJSON(w io.Writer) error {
	holder, cut := clip(st.holder)
	out := holderJSON{
		Key:             st.key,
		Locked:          st.locked,
		Holder:          holder,
		HolderBytes:     len(st.holder),
		HolderTruncated: cut,
		Token:           st.token,
		Since:           st.token,
		Revision:        st.revision,
		Waiting:         st.waiting,
		Holders:         len(st.holders),
		HeldBy:          holdsJSON(st.holders),
	}
	if st.lease != 0 {
		out.Lease = &leaseJSON{ID: fmt.Sprintf("%x", int64(st.lease)), GrantedTTL: st.granted, RemainingTTL: st.ttl}
	}
	return json.NewEncoder(w).Encode(out)
}
