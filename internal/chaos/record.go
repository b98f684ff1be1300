package chaos

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
)

// Variant is how a worker writes the counter.
type Variant string

const (
	// Plain writes are unguarded Puts sent with fn's context: only the loss
	// signal keeps a worker that lost the lock from writing.
	Plain Variant = "plain"
	// Fenced writes are Txns guarded by the hold's IsOwner comparison, sent
	// with a context of their own: only the fence, in etcd, keeps a late
	// write from landing.
	Fenced Variant = "fenced"
	// Leader workers run one Lead each: every term writes as Fenced does,
	// then leads until its context ends or the term's time is up (see
	// leader.go).
	Leader Variant = "leader"
)

// Write outcomes in a Record.
const (
	WriteNone    = ""        // no write was sent: the read failed or the worker was stopped
	WriteOK      = "ok"      // etcd acknowledged the write
	WriteRefused = "refused" // etcd answered that the fence failed (fenced variant)
	WriteUnknown = "unknown" // no answer: the write may or may not have landed
)

// Record is what a worker writes, as one JSON line, for every WithLock call.
// Times are Now readings; zero means "did not happen".
type Record struct {
	Node  string `json:"node"`
	Seq   int64  `json:"seq"`   // the call's number within its worker, from 1
	Call  int64  `json:"call"`  // WithLock was called
	Acq   int64  `json:"acq"`   // the Acquired event: the lock was granted
	Token int64  `json:"token"` // the hold's fencing token
	// Rule is, in the admission variants, the hold's admission rule:
	// RulePermit, RuleShared or RuleExclusive.
	Rule string `json:"rule,omitempty"`

	FnStart int64 `json:"fnStart"`
	ReadOK  bool  `json:"readOK"`
	Read    int64 `json:"read"`    // counter value read
	ReadRev int64 `json:"readRev"` // etcd revision of the read
	ReadEnd int64 `json:"readEnd"` // the read returned

	WriteStart int64  `json:"writeStart"`
	WriteEnd   int64  `json:"writeEnd"`
	Written    int64  `json:"written"` // Read+1
	Write      string `json:"write"`   // WriteOK, WriteRefused, WriteUnknown or WriteNone
	WriteRev   int64  `json:"writeRev"`
	WriteVia   string `json:"writeVia,omitempty"` // the member whose endpoint served the write, if it answered
	WriteErr   string `json:"writeErr,omitempty"`

	FnEnd int64 `json:"fnEnd"`
	// Lost is when the loss signal came: fn's context was cancelled with a
	// cause wrapping ErrLockLost, or, if fn had returned, the Lost event.
	Lost int64  `json:"lost"`
	End  int64  `json:"end"` // WithLock returned
	Err  string `json:"err,omitempty"`

	// KeyCheck is, in the leader variant, what a read at the start of the
	// term found of the term's own key: KeyHeld, KeyMissing or KeyUnknown
	// (no answer); KeyChecked is when the answer came.
	KeyCheck   string `json:"keyCheck,omitempty"`
	KeyChecked int64  `json:"keyChecked,omitempty"`

	// Renewed lists the hold's Renewed events (OnEvent), each when the hook
	// ran: just after microlock saw a renewal acknowledged, so an upper
	// bound of the acknowledgement, not the time the renewal was sent (Ops
	// has that). microlock delivers Renewed to acquired holds only: a
	// waiter's renewals are in Ops alone.
	Renewed []int64 `json:"renewed,omitempty"`
	// Ops are the worker's etcd requests that say how a lock key can go
	// away, from the end of the worker's previous record to the end of this
	// one, whichever hold they served: the lease renewal loop runs between
	// calls too.
	Ops []Op `json:"ops,omitempty"`
}

// Op kinds.
const (
	OpGrant     = "grant"     // LeaseGrant; Lease is the lease granted
	OpKeepAlive = "keepalive" // one LeaseKeepAlive request and its answer
	OpRevoke    = "revoke"    // LeaseRevoke
	OpPut       = "put"       // a lock key written, with Lease (in a Txn, the branch that ran)
	OpDelete    = "delete"    // a lock key (or range) deleted (in a Txn, the branch that ran)
)

// Op is one request of a worker's etcd client, as its gRPC interceptors saw
// it go out on the wire and its answer come back: every attempt of every
// lease grant, renewal and revocation, and every write and deletion of a
// lock key. Times are Now readings. With them the checker can tell a lock
// key deleted by its own client from one deleted by etcd revoking its lease,
// and whether that lease was being renewed.
type Op struct {
	Op    string `json:"op"`              // OpGrant, OpKeepAlive, OpRevoke, OpPut or OpDelete
	Lease string `json:"lease,omitempty"` // lease ID, 16 hex digits as in etcd's logs
	Key   string `json:"key,omitempty"`   // OpPut, OpDelete
	End   string `json:"end,omitempty"`   // OpDelete of a range: its range end
	Sent  int64  `json:"sent"`            // just before the request went out
	// Acked is when the answer came; 0: none came (Err says why), and the
	// request may or may not have taken effect.
	Acked int64 `json:"acked,omitempty"`
	// TTL is, for an answered OpGrant or OpKeepAlive, the TTL in seconds
	// that etcd granted; 0 in an answer means the lease is gone.
	TTL  int64  `json:"ttl,omitempty"`
	Rev  int64  `json:"rev,omitempty"`  // the answer's header: the member's revision
	Term uint64 `json:"term,omitempty"` // the answer's header: the member's raft term
	Via  string `json:"via,omitempty"`  // the member that answered
	Err  string `json:"err,omitempty"`
}

// Renewal reports whether op is an acknowledged grant or renewal that left
// its lease alive: etcd cannot rightly expire the lease before Sent + TTL.
func (op *Op) Renewal() bool {
	return (op.Op == OpGrant || op.Op == OpKeepAlive) && op.Sent != 0 && op.Acked != 0 && op.TTL > 0
}

// Deletes reports whether op may have deleted key.
func (op *Op) Deletes(key string) bool {
	if op.Op != OpDelete {
		return false
	}
	if op.End == "" {
		return op.Key == key
	}
	// A range [Key, End); "\x00" as End means every key from Key on.
	return key >= op.Key && (op.End == "\x00" || key < op.End)
}

// Stop is when the hold's work stopped: the loss signal or fn's return,
// whichever came first. Zero if the lock was never granted.
func (r *Record) Stop() int64 {
	switch {
	case r.Acq == 0:
		return 0
	case r.Lost != 0 && (r.FnEnd == 0 || r.Lost < r.FnEnd):
		return r.Lost
	case r.FnEnd != 0:
		return r.FnEnd
	default:
		return r.End
	}
}

// Value is what the counter key holds: the count and who wrote it, so that
// every write in etcd's history can be matched to the worker's record.
type Value struct {
	N     int64  `json:"n"`
	Node  string `json:"node"`
	Seq   int64  `json:"seq"`
	Token int64  `json:"token"`
}

// ParseValue decodes a counter value; an absent key is the zero Value.
func ParseValue(b []byte) (Value, error) {
	var v Value
	if len(b) == 0 {
		return v, nil
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("counter value %q: %v", b, err)
	}
	return v, nil
}

// ReadRecords reads a worker's JSON-lines file.
func ReadRecords(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, line, err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}
