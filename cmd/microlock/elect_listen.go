//go:build unix

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/pflag"

	"github.com/microlock/microlock"
)

// listen is elect --listen: the current leader, then every change of leader
// or of its value, until SIGINT or SIGTERM.
func (c *cli) listen(fs *pflag.FlagSet, conn *connFlags, key string, asJSON bool) error {
	client, err := c.connect(fs, conn)
	if err != nil {
		return err
	}
	defer client.Close()
	return follow(client, conn, key, "listening to", func(ev microlock.Event) error {
		if err := printLeader(c.stdout, ev, time.Now(), asJSON); err != nil {
			return fmt.Errorf("microlock: elect --listen: %w", err)
		}
		return nil
	})
}

type leaderJSON struct {
	Time   string `json:"time"`
	Key    string `json:"key"`
	Event  string `json:"event"`
	Leader string `json:"leader"`
	Term   int64  `json:"term"`
}

// printLeader prints one change of leadership.
func printLeader(w io.Writer, ev microlock.Event, at time.Time, asJSON bool) error {
	leader, _ := clip([]byte(ev.Holder))
	event := "leader"
	if ev.Type != microlock.Locked {
		event, leader = "no leader", ""
	}
	if asJSON {
		return json.NewEncoder(w).Encode(leaderJSON{Time: at.Format(timeLayout), Key: ev.Key, Event: event, Leader: leader, Term: ev.Token})
	}
	var err error
	if ev.Type == microlock.Locked {
		_, err = fmt.Fprintf(w, "%s  leader     %s  %s  term %d\n", at.Format(timeLayout), strconv.Quote(ev.Key), quoted([]byte(ev.Holder)), ev.Token)
	} else {
		_, err = fmt.Fprintf(w, "%s  no leader  %s\n", at.Format(timeLayout), strconv.Quote(ev.Key))
	}
	return err
}
