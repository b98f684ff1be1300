package chaos

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// LogLine is a line of an etcd member's log that bears on leases or on who
// leads, on the suite's clock.
type LogLine struct {
	Member string `json:"member"`
	At     int64  `json:"at"` // Now reading
	Level  string `json:"level"`
	Text   string `json:"text"` // the message and its fields, member IDs replaced by names
}

// logMarkers select the lines worth keeping, by their message: raft's
// leader changes, and what etcd says about revoking leases and about its own
// leadership (etcd 3.7 logs no line per revoked lease; a revocation shows in
// a slow apply's request dump as lease_revoke).
var logMarkers = []string{
	"became leader", "elected leader", "lost leader", "changed leader", "became follower",
	"became candidate", "became pre-candidate", "stepped down", "leader changed",
	"revok", "leadership", "isn't a leader", "lease_revoke",
}

// ClockReading is a reading of the suite's clock and of the wall clock at
// one moment.
type ClockReading struct{ Now, Wall int64 }

// ReadClock reads both clocks; the wall clock sits between two readings of
// Now, and their middle is taken.
func ReadClock() ClockReading {
	a := Now()
	w := time.Now().UnixNano()
	b := Now()
	return ClockReading{Now: a + (b-a)/2, Wall: w}
}

// WallToNow maps a wall-clock time onto the suite's clock by the readings a
// and b, taken before and after the times to map; between them it follows
// any adjustment of the wall clock linearly.
func WallToNow(a, b ClockReading, wall time.Time) int64 {
	w := wall.UnixNano()
	if b.Wall == a.Wall {
		return a.Now + (w - a.Wall)
	}
	rate := float64(b.Now-a.Now) / float64(b.Wall-a.Wall)
	return a.Now + int64(float64(w-a.Wall)*rate)
}

// ReadMemberLog reads the lines of member's etcd log (zap's JSON lines) that
// logMarkers select, with their times mapped by toNow. ids maps member IDs,
// as etcd writes them (hex in raft's messages, decimal in fields), to names.
func ReadMemberLog(path, member string, ids map[uint64]string, toNow func(time.Time) int64) ([]LogLine, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var pairs []string
	for id, name := range ids {
		pairs = append(pairs, strconv.FormatUint(id, 16), name, strconv.FormatUint(id, 10), name)
	}
	names := strings.NewReplacer(pairs...)
	var out []LogLine
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var fields map[string]any
		d := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		d.UseNumber() // member IDs are uint64s: keep their digits
		if d.Decode(&fields) != nil {
			continue // not one of zap's lines: a panic's trace, say
		}
		msg, _ := fields["msg"].(string)
		line := sc.Text()
		if !slices.ContainsFunc(logMarkers, func(m string) bool {
			return strings.Contains(strings.ToLower(msg), m) || (m == "lease_revoke" && strings.Contains(line, m))
		}) {
			continue
		}
		ts, _ := fields["ts"].(string)
		t, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			continue
		}
		level, _ := fields["level"].(string)
		out = append(out, LogLine{Member: member, At: toNow(t), Level: level, Text: names.Replace(logText(msg, fields))})
	}
	return out, sc.Err()
}

// logText is a line's message followed by its own fields, without zap's.
func logText(msg string, fields map[string]any) string {
	var keys []string
	for k := range fields {
		switch k {
		case "level", "ts", "msg", "caller", "logger":
		default:
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(msg)
	for _, k := range keys {
		v, err := json.Marshal(fields[k])
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, " %s=%s", k, v)
	}
	const max = 400
	if s := b.String(); len(s) > max {
		return s[:max] + "…"
	}
	return b.String()
}
