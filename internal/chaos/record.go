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
