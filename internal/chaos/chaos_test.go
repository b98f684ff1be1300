package chaos_test

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/microlock/microlock/internal/chaos"
	"github.com/microlock/microlock/internal/etcdtest"
)

// Environment of a run. The default is the short profile, which every
// go test runs; make chaos sets the full one.
const (
	envProfile = "MICROLOCK_CHAOS"        // "full" for the full profile
	envSeed    = "MICROLOCK_CHAOS_SEED"   // the full profile's seed; default: the time
	envLength  = "MICROLOCK_CHAOS_LENGTH" // the full profile's length per variant; default fullLength
	envReport  = "MICROLOCK_CHAOS_REPORT" // file for the table; default: the test's artifact directory
)

// fullLength is the full profile's planned fault time per variant.
const fullLength = 5 * time.Minute

const (
	lockKey    = "chaos/register"
	counterKey = "chaos/counter"
	historyKey = "chaos/" // a prefix covering both
)

func profile(t *testing.T) chaos.Profile {
	t.Helper()
	if os.Getenv(envProfile) != "full" {
		return chaos.Short()
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(envSeed); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", envSeed, s, err)
		}
	}
	length := fullLength
	if s := os.Getenv(envLength); s != "" {
		var err error
		if length, err = time.ParseDuration(s); err != nil || length <= 0 {
			t.Fatalf("%s=%q: want a positive duration", envLength, s)
		}
	}
	return chaos.Full(seed, length)
}

// TestChaos runs the workload under faults, once with plain writes and once
// with fenced writes, each on a fresh cluster, and fails on any violation
// that the checks forbid. The table is logged and written to a file.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault-injection suite runs for minutes")
	}
	suite(t, profile(t), []chaos.Variant{chaos.Plain, chaos.Fenced}, "chaos-report.txt")
}

// suite runs the variants in turn, each on a fresh cluster, fails on any
// violation that the checks forbid, and logs the table and writes it to a
// file: the file named by MICROLOCK_CHAOS_REPORT with name's suffix after
// "chaos-report", or name in the test's artifact directory.
func suite(t *testing.T, p chaos.Profile, variants []chaos.Variant, name string) {
	if p.Name == "full" {
		t.Logf("profile full, seed %d (replay with %s=full %s=%d)", p.Seed, envProfile, envSeed, p.Seed)
	} else {
		t.Logf("profile %s, seed %d", p.Name, p.Seed)
	}
	bin := buildWorker(t)

	var results []*chaos.Result
	version := "?"
	for _, v := range variants {
		t.Run(string(v), func(t *testing.T) {
			res, ver := runVariant(t, bin, p, v)
			results, version = append(results, res), ver
			for i, viol := range res.Forbidden() {
				if i == 20 {
					t.Errorf("%d more forbidden violations", len(res.Forbidden())-i)
					break
				}
				t.Errorf("%s (%s): %s", viol.Check, faultName(viol.Fault), viol.Detail)
			}
			// Explained by etcd, with the evidence the report lists: they
			// do not fail the run, but they are never passed over.
			for _, viol := range res.EtcdCases() {
				t.Logf("%s: %s (%s): %s\n    %s", chaos.CategoryEtcd, viol.Check, faultName(viol.Fault), viol.Detail,
					strings.Join(viol.Etcd.Evidence(), "\n    "))
			}
		})
	}
	if len(results) == 0 {
		return
	}
	report := chaos.Report(p, version, results, 5)
	t.Log("\n" + report)
	path := os.Getenv(envReport)
	if path == "" {
		path = filepath.Join(t.ArtifactDir(), name)
	} else if suffix := strings.TrimPrefix(strings.TrimSuffix(name, ".txt"), "chaos-report"); suffix != "" {
		path = strings.TrimSuffix(path, ".txt") + suffix + ".txt"
	}
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		t.Errorf("writing the report: %v", err)
	} else {
		t.Logf("report written to %s", path)
	}
}

func faultName(k chaos.Kind) string {
	if k == "" {
		return "no fault"
	}
	return string(k)
}

// runVariant runs one variant on a fresh cluster and checks it; if the run
// cannot be carried out, the test stops.
func runVariant(t *testing.T, bin string, p chaos.Profile, v chaos.Variant) (*chaos.Result, string) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// At info level etcd logs raft's leader changes, the evidence of what a
	// member fault did to the cluster.
	c := etcdtest.Start(t, 3, etcdtest.WithPeerProxies(), etcdtest.WithArgs("--log-level", "info"))
	// Kept with go test -artifacts, for a look at the timeline.
	dir := t.ArtifactDir()
	// Registered after Start, so it runs before the cluster's cleanup
	// removes the logs, whatever ended the test.
	t.Cleanup(func() {
		for _, m := range c.Members {
			if err := copyFile(m.LogPath(), filepath.Join(dir, fmt.Sprintf("%s-%s.log", v, m.Name))); err != nil {
				t.Errorf("keeping member %s's log: %v", m.Name, err)
			}
		}
	})
	admin := c.Client(t)
	st, err := admin.Status(ctx, c.Members[0].ClientURL)
	if err != nil {
		t.Fatal(err)
	}
	n := &nemesis{
		t:       t,
		c:       c,
		admin:   admin,
		prefix:  lockKey + "/",
		counter: counterKey,
		ttl:     p.TTL,
		rng:     rand.New(rand.NewPCG(p.Seed, 1)),
	}
	for _, m := range c.Members {
		n.members = append(n.members, c.Client(t, m.ClientURL))
	}

	clockStart := chaos.ReadClock()
	run := &chaos.Run{Variant: v, TTL: p.TTL, LockPrefix: lockKey + "/", Counter: counterKey, Start: chaos.Now()}
	for i := range p.Workers {
		n.workers = append(n.workers, startWorker(t, workerConfig{
			bin: bin, dir: dir, node: fmt.Sprintf("w%d", i+1),
			variant: v, ttl: p.TTL, seed: p.Seed + uint64(i),
			key: lockKey, counter: counterKey, cluster: c,
		}))
	}
	// Faults begin once the workers are under way.
	if _, err := n.progress(ctx, chaos.Now()); err != nil {
		t.Fatal(err)
	}
	if err := n.run(ctx, chaos.Schedule(p, v)); err != nil {
		t.Fatal(err)
	}
	for _, w := range n.workers {
		if err := w.stop(); err != nil {
			t.Error(err)
		}
	}
	run.End = chaos.Now()
	run.Faults = n.faults
	for _, w := range n.workers {
		recs, err := chaos.ReadRecords(w.records)
		if err != nil {
			t.Fatal(err)
		}
		run.Records = append(run.Records, recs...)
	}
	hctx, hcancel := context.WithTimeout(ctx, time.Minute)
	defer hcancel()
	if run.History, err = chaos.ReadHistory(hctx, admin, historyKey); err != nil {
		t.Fatal(err)
	}
	if run.Logs, err = readMemberLogs(c, clockStart, chaos.ReadClock()); err != nil {
		t.Error(err)
	}
	if err := saveTimeline(dir, run); err != nil {
		t.Error(err)
	}
	// Checked even if a worker failed (a data race it found, say): the
	// history is complete, and the table is worth having.
	return chaos.Check(run), "v" + st.Version
}

// readMemberLogs reads the lines of every member's log that bear on leaders
// and leases, in time order, on the suite's clock by the two readings
// taken around the run.
func readMemberLogs(c *etcdtest.Cluster, a, b chaos.ClockReading) ([]chaos.LogLine, error) {
	ids := make(map[uint64]string)
	for _, m := range c.Members {
		ids[m.ID()] = m.Name
	}
	toNow := func(wall time.Time) int64 { return chaos.WallToNow(a, b, wall) }
	var out []chaos.LogLine
	for _, m := range c.Members {
		lines, err := chaos.ReadMemberLog(m.LogPath(), m.Name, ids, toNow)
		if err != nil {
			return nil, fmt.Errorf("reading member %s's log: %v", m.Name, err)
		}
		out = append(out, lines...)
	}
	slices.SortStableFunc(out, func(x, y chaos.LogLine) int { return cmp.Compare(x.At, y.At) })
	return out, nil
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

// saveTimeline writes the faults, etcd's history and the member log lines
// that the checker used (on the suite's clock, member IDs named) next to
// the workers' records, one JSON value a line.
func saveTimeline(dir string, run *chaos.Run) error {
	for name, items := range map[string][]any{
		"faults.jsonl":  toAny(run.Faults),
		"history.jsonl": toAny(run.History),
		"logs.jsonl":    toAny(run.Logs),
	} {
		var b []byte
		for _, it := range items {
			line, err := json.Marshal(it)
			if err != nil {
				return err
			}
			b = append(append(b, line...), '\n')
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func toAny[T any](s []T) []any {
	out := make([]any, len(s))
	for i := range s {
		out[i] = s[i]
	}
	return out
}
