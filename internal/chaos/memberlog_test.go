package chaos_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/microlock/microlock/internal/chaos"
)

// Lines as etcd 3.7 writes them: raft's leader changes name members by hex
// ID, zap's fields by decimal ID.
const memberLog = `{"level":"info","ts":"2026-11-29T05:22:02.463107Z","logger":"raft","caller":"v3@v3.7.0/raft.go:970","msg":"a86b66c89319678 became leader at term 2"}
{"level":"info","ts":"2026-11-29T05:22:03.000000Z","caller":"etcdserver/server.go:1","msg":"published local member to cluster through raft"}
not JSON: a panic's trace, say
{"level":"info","ts":"2026-11-29T05:22:08.006264Z","logger":"raft","caller":"v3@v3.7.0/node.go:376","msg":"raft.node: 50a38ca2501a054 lost leader a86b66c89319678 at term 2"}
{"level":"warn","ts":"2026-11-29T05:22:09.5Z","caller":"etcdserver/server.go:868","msg":"Ignore the lease revoking request because current member isn't a leader","local-member-id":17763547398478532331}
`

func TestReadMemberLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m0.log")
	if err := os.WriteFile(path, []byte(memberLog), 0o644); err != nil {
		t.Fatal(err)
	}
	// The wall clock reads 05:22:00 when the suite's reads 100 s, and runs
	// at the same rate.
	base := time.Date(2026, 11, 29, 5, 22, 0, 0, time.UTC)
	a := chaos.ClockReading{Now: int64(100 * time.Second), Wall: base.UnixNano()}
	b := chaos.ClockReading{Now: a.Now + int64(time.Minute), Wall: a.Wall + int64(time.Minute)}
	ids := map[uint64]string{0xa86b66c89319678: "m0", 0x50a38ca2501a054: "m1", 17763547398478532331: "m2"}
	lines, err := chaos.ReadMemberLog(path, "m2", ids, func(w time.Time) int64 { return chaos.WallToNow(a, b, w) })
	if err != nil {
		t.Fatal(err)
	}
	want := []chaos.LogLine{
		{Member: "m2", At: int64(102463107 * time.Microsecond), Level: "info", Text: "m0 became leader at term 2"},
		{Member: "m2", At: int64(108006264 * time.Microsecond), Level: "info", Text: "raft.node: m1 lost leader m0 at term 2"},
		{Member: "m2", At: int64(109500 * time.Millisecond), Level: "warn", Text: "Ignore the lease revoking request because current member isn't a leader local-member-id=m2"},
	}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines, want %d: %+v", len(lines), len(want), lines)
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, lines[i], want[i])
		}
	}
}
