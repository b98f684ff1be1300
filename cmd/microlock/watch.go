//go:build unix

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

func watchHelp() help {
	return help{
		usage: "microlock watch [flags] KEY",
		about: `
Print one line for the current state of the lock KEY, then one per change of
holder, until SIGINT or SIGTERM (exit code 0). Each line has the local time
at which the change was seen, "locked" with the holder's node ID and token,
or "unlocked". For a semaphore (run --limit) or a shared lock (run --shared)
a line lists every holder, the oldest first, and their count, and each
change of that set is a line. Holds shorter than one etcd watch response may show only as
the last of them. watch rides out etcd restarts and lost connections.`,
		examples: `  microlock watch jobs/nightly-report
  microlock watch --json jobs/nightly-report | jq -c 'select(.event == "locked")'`,
		extra: `JSON fields: time (RFC 3339, local), key, event ("locked" or "unlocked"),
holder and token (the oldest holder's; empty and 0 when unlocked), holders
(how many hold KEY) and held_by (every holder, with holder and token).

Exit codes: 0 after SIGINT or SIGTERM; 1 other error; 64 usage error;
69 etcd unreachable or timed out when watch starts.`,
	}
}

func (c *cli) watch(args []string) error {
	fs := newFlagSet("watch")
	conn := addConnFlags(fs)
	asJSON := fs.Bool("json", false, "print one JSON object per line")
	key, client, err := c.argAndClient("watch", "KEY", fs, conn, args, watchHelp())
	if err != nil {
		return err
	}
	defer client.Close()

	return follow(client, conn, key, "watching", func(ev microlock.Event) error {
		if err := printEvent(c.stdout, ev, time.Now(), *asJSON); err != nil {
			return fmt.Errorf("microlock: watch: %w", err)
		}
		return nil
	})
}

// follow prints, with print, the state of key and then every change, until
// SIGINT or SIGTERM: watch's and elect --listen's loop. doing names it in
// an error ("watching").
func follow(client *clientv3.Client, conn *connFlags, key, doing string, print func(microlock.Event) error) error {
	ctx, stop := onSignals(context.Background())
	defer stop()
	// Watch reads the state with ctx, which has no deadline: check first
	// that etcd answers, so that a wrong endpoint fails fast.
	pctx, pcancel := context.WithTimeout(ctx, conn.commandTimeout)
	_, err := client.Get(pctx, key+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	pcancel()
	if err == nil {
		var events <-chan microlock.Event
		if events, err = microlock.Watch(ctx, client, key); err == nil {
			for ev := range events {
				if err := print(ev); err != nil {
					return err
				}
			}
			return nil // the channel closes only once ctx is done
		}
	}
	if interrupted(ctx) != nil {
		return nil
	}
	return etcdError(fmt.Errorf("microlock: %s %q on etcd at %s: %w", doing, key, conn.endpoints, err))
}

type eventJSON struct {
	Time   string `json:"time"`
	Key    string `json:"key"`
	Event  string `json:"event"`
	Holder string `json:"holder"`
	Token  int64  `json:"token"`
	// Holders and HeldBy: how many hold KEY and who; more than one for a
	// semaphore or a shared lock.
	Holders int        `json:"holders"`
	HeldBy  []holdJSON `json:"held_by"`
}

const timeLayout = "2006-01-02T15:04:05.000Z07:00"

func printEvent(w io.Writer, ev microlock.Event, at time.Time, asJSON bool) error {
	holder, _ := clip([]byte(ev.Holder))
	if asJSON {
		return json.NewEncoder(w).Encode(eventJSON{
			Time:    at.Format(timeLayout),
			Key:     ev.Key,
			Event:   ev.Type.String(),
			Holder:  holder,
			Token:   ev.Token,
			Holders: ev.Holders,
			HeldBy:  holdsJSON(ev.HeldBy),
		})
	}
	var err error
	switch {
	case ev.Type == microlock.Locked && ev.Holders > 1:
		var b strings.Builder
		for i, h := range ev.HeldBy {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s token %d", quoted([]byte(h.Holder)), h.Token)
		}
		_, err = fmt.Fprintf(w, "%s  locked    %s  %d holders: %s\n", at.Format(timeLayout), strconv.Quote(ev.Key), ev.Holders, b.String())
	case ev.Type == microlock.Locked:
		_, err = fmt.Fprintf(w, "%s  locked    %s  holder %s  token %d\n", at.Format(timeLayout), strconv.Quote(ev.Key), quoted([]byte(ev.Holder)), ev.Token)
	default:
		_, err = fmt.Fprintf(w, "%s  unlocked  %s\n", at.Format(timeLayout), strconv.Quote(ev.Key))
	}
	return err
}
