//go:build unix

package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func listHelp() help {
	return help{
		usage: "microlock list [flags] PREFIX",
		about: `
List every lock whose key starts with PREFIX that someone holds now: the
lock's key, its holder's node ID, the fencing token, how long the holder's
lease has left unless it is renewed, and how many others wait.

The locks are read at one etcd revision (the lease times just after): a
snapshot of what is held now, and by whom. Every key under PREFIX is taken
for a place in a lock's queue, as microlock, etcd's concurrency.Mutex and
etcdctl lock lay them out (the lock's key, "/", then one key per holder or
waiter): keep other data out of PREFIX, or it shows as locks too.`,
		examples: `  microlock list jobs/
  microlock list --json jobs/ | jq -r 'select(.waiting > 0) | .key'`,
		extra: `JSON: one object per lock and line, with the fields of holder --json: key,
locked, holder, holder_bytes, holder_truncated, token, since, revision,
lease (null when the key has no lease; else id, granted_ttl_seconds,
remaining_ttl_seconds, with remaining -1 when etcd no longer knows the
lease) and waiting. Nothing is printed when no lock is held.

Exit codes: 0 whether or not locks are held; 1 other error; 64 usage error;
69 etcd unreachable or timed out.`,
	}
}

func (c *cli) list(args []string) error {
	fs := newFlagSet("list")
	conn := addConnFlags(fs)
	asJSON := fs.Bool("json", false, "print one JSON object per lock, one per line")
	prefix, client, err := c.argAndClient("list", "PREFIX", fs, conn, args, listHelp())
	if err != nil {
		return err
	}
	defer client.Close()

	var locks []lockState
	err = askEtcd(conn, fmt.Sprintf("listing the locks under %q", prefix), func(ctx context.Context) (err error) {
		locks, err = readLocks(ctx, client, prefix)
		return err
	})
	if err != nil {
		return err
	}
	if *asJSON {
		for _, st := range locks {
			if err := st.writeJSON(c.stdout); err != nil {
				return err
			}
		}
		return nil
	}
	writeList(c.stdout, prefix, locks)
	return nil
}

// readLocks reads every lock under prefix at one revision: each key under
// it is a place in the queue of the lock whose key is the part before its
// last "/"; the place with the smallest create revision holds the lock.
// Only locks whose own key starts with prefix are listed, sorted by key.
// Then it reads the holders' leases, once per lease.
func readLocks(ctx context.Context, client *clientv3.Client, prefix string) ([]lockState, error) {
	resp, err := client.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	byKey := make(map[string]*lockState)
	for _, kv := range resp.Kvs {
		i := strings.LastIndexByte(string(kv.Key), '/')
		if i < 0 || !strings.HasPrefix(string(kv.Key[:i]), prefix) {
			continue // not a place in the queue of a lock under prefix
		}
		key := string(kv.Key[:i])
		st := byKey[key]
		if st == nil {
			st = &lockState{key: key, revision: resp.Header.Revision, locked: true, token: kv.CreateRevision + 1, waiting: -1}
			byKey[key] = st
		}
		st.waiting++
		if kv.CreateRevision < st.token {
			st.holder, st.holderKey, st.token = kv.Value, kv.Key, kv.CreateRevision
			st.lease = clientv3.LeaseID(kv.Lease)
		}
	}
	locks := make([]lockState, 0, len(byKey))
	for _, st := range byKey {
		locks = append(locks, *st)
	}
	slices.SortFunc(locks, func(a, b lockState) int { return strings.Compare(a.key, b.key) })
	type ttl struct{ granted, left int64 }
	leases := make(map[clientv3.LeaseID]ttl)
	for i := range locks {
		st := &locks[i]
		if st.lease == 0 {
			continue
		}
		t, ok := leases[st.lease]
		if !ok {
			lr, err := client.TimeToLive(ctx, st.lease)
			if err != nil {
				return nil, err
			}
			t = ttl{lr.GrantedTTL, lr.TTL}
			leases[st.lease] = t
		}
		st.granted, st.ttl = t.granted, t.left
	}
	return locks, nil
}

// writeList prints the locks as a table, one line each.
func writeList(w io.Writer, prefix string, locks []lockState) {
	if len(locks) == 0 {
		fmt.Fprintf(w, "no lock under %s is held\n", strconv.Quote(prefix))
		return
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tHOLDER\tTOKEN\tLEASE LEFT\tWAITING")
	for _, st := range locks {
		left := "none"
		switch {
		case st.lease != 0 && st.ttl < 0:
			left = "expired"
		case st.lease != 0:
			left = strconv.FormatInt(st.ttl, 10) + "s"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\n", strconv.Quote(st.key), quoted(st.holder), st.token, left, st.waiting)
	}
	_ = tw.Flush()
}
