package microlock

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Admission rules. Every hold, whatever its rule, is one lease-bound key in
// the same queue under key + "/", ordered by create revision, so that
// lockers that know nothing of microlock (etcd's concurrency.Mutex, its Lock
// RPC, etcdctl lock) count shared holders and permits as older competitors
// and wait for them.
//
// The rule of each key is written in its name, right after the prefix:
//
//	key/<lease>_<slot>         exclusive (a Mutex; etcd's own keys are key/<lease>)
//	key/~s:<lease>_<slot>      shared (Shared)
//	key/~p<n>:<lease>_<slot>   a permit of a semaphore of limit n (WithLimit(n), n > 1)
//
// The name, not the value, carries it for three reasons. The value stays the
// node ID, which Holder, Watch, AlreadyLockedError and etcdctl show. A
// single read of the prefix, sorted by create revision, tells every key's
// rule, so admission is decided from one read. And etcd can compare key
// ranges inside a Txn: '~' sorts after every character of etcd's hex lease
// IDs and of our exclusive names, so all tagged keys lie in one range, each
// rule's keys in a sub-range of it, and "no key of another rule" is a
// compare of create revision 0 over the ranges around our own. That compare
// sits in the same Txn as every enqueue of a permit or a shared hold: two
// clients that disagree on a key's limit, or that mix Shared with WithLimit,
// can never have keys in the queue at once, whatever the interleaving; the
// later one is refused. A record of the limit kept beside the queue would
// need a lifetime of its own (whose lease keeps it?), and a stale record
// would refuse a key that nobody uses any more; the names live and die with
// the holds they describe.
//
// An exclusive Mutex's enqueue keeps today's shape (etcd's Mutex and the
// tools that tell requests apart by it see no change, and WithLimit(1) is
// that Mutex): it refuses a semaphore's key when it reads a permit as its
// predecessor, in the enqueue Txn or when it looks again, and TryLock when
// it reads a permit as the holder. Whatever is refused or not, admission
// stays safe: every key that is not ours to share with is an exclusive
// barrier to a permit or a shared hold.

const (
	tagStart  = "~"    // every tagged key's name starts with it
	tagEnd    = "\x7f" // just after '~': the end of the tagged range
	sharedTag = "~s:"
	permitTag = "~p" // followed by the decimal limit and ':'
)

// admission is a Mutex's rule.
type admission struct {
	limit  int    // holders at once: 1 for an exclusive lock or a shared one
	shared bool   // Shared
	tag    string // the key-name tag after the prefix; "" for exclusive
}

func newAdmission(o *options) admission {
	switch {
	case o.shared:
		return admission{limit: 1, shared: true, tag: sharedTag}
	case o.limit > 1:
		return admission{limit: o.limit, tag: permitTag + strconv.Itoa(o.limit) + ":"}
	}
	return admission{limit: 1}
}

func (a admission) exclusive() bool { return a.tag == "" }

func (a admission) String() string {
	switch {
	case a.shared:
		return "a shared lock"
	case a.limit > 1:
		return fmt.Sprintf("a semaphore of limit %d", a.limit)
	}
	return "an exclusive lock"
}

// keyRule returns the rule a key of the queue under pfx was written with.
// Keys without a tag, ours or etcd's or anyone's, are exclusive.
func keyRule(pfx string, key []byte) admission {
	name := strings.TrimPrefix(string(key), pfx)
	switch {
	case strings.HasPrefix(name, sharedTag):
		return admission{limit: 1, shared: true, tag: sharedTag}
	case strings.HasPrefix(name, permitTag):
		digits, _, ok := strings.Cut(name[len(permitTag):], ":")
		n, err := strconv.Atoi(digits)
		// Only the names WithLimit writes: 2 to MaxLimit, in plain decimal.
		if ok && err == nil && n > 1 && n <= MaxLimit && digits == strconv.Itoa(n) {
			return admission{limit: n, tag: permitTag + digits + ":"}
		}
	}
	return admission{limit: 1}
}

// ErrMismatch means the lock's key is in use under another admission rule:
// a semaphore of another limit, a shared lock where permits are queued (or
// the other way round), or an exclusive Mutex on a semaphore's key. It is
// returned at acquisition, before this hold could count as a holder.
var ErrMismatch = errors.New("microlock: the key is in use under another admission rule")

// mismatch describes ErrMismatch for a key of rule found.
func (m *Mutex) mismatch(found admission) error {
	return fmt.Errorf("%w: %s is %s, this lock is %s", ErrMismatch, quoteKey(m.key), found, m.adm)
}

// foreignRanges are the key ranges under pfx that must be empty for a key of
// this rule to enter the queue: all permits for a shared hold; every tagged
// key but its own tag's for a permit. An exclusive lock has none (see above).
func (a admission) foreignRanges(pfx string) [][2]string {
	switch {
	case a.shared:
		return [][2]string{{pfx + permitTag, pfx + "~q"}}
	case a.limit > 1:
		end := a.tag[:len(a.tag)-1] + ";" // just after every key of the tag
		return [][2]string{{pfx + tagStart, pfx + a.tag}, {pfx + end, pfx + tagEnd}}
	}
	return nil
}

// foreignCmps compares create revision 0 over the foreign ranges.
func (a admission) foreignCmps(pfx string) []clientv3.Cmp {
	var cmps []clientv3.Cmp
	for _, r := range a.foreignRanges(pfx) {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(r[0]), "=", 0).WithRange(r[1]))
	}
	return cmps
}

// foreignReads read the oldest key of each foreign range: why a compare
// failed.
func (a admission) foreignReads(pfx string) []clientv3.Op {
	var ops []clientv3.Op
	for _, r := range a.foreignRanges(pfx) {
		ops = append(ops, clientv3.OpGet(r[0], clientv3.WithRange(r[1]),
			clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1)))
	}
	return ops
}

// aheadReads appends to ops the reads of the keys that can hold back a key
// of this rule created after maxRev (0: any key, for a read in the Txn that
// writes it), nearest first: for an exclusive lock the last key; for a permit
// of limit n, the n nearest keys; for a shared hold, the nearest key before
// and after the shared range, the nearer of which is the nearest exclusive
// one. Their responses go to admit.
func (a admission) aheadReads(ops []clientv3.Op, pfx string, maxRev int64) []clientv3.Op {
	if maxRev == 0 && !a.shared && a.limit == 1 {
		// The enqueue of every exclusive Lock: options built once.
		return append(ops, clientv3.OpGet(pfx, lastCreate...))
	}
	last := []clientv3.OpOption{clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend)}
	if maxRev > 0 {
		last = append(last, clientv3.WithMaxCreateRev(maxRev))
	}
	if a.shared {
		end := clientv3.GetPrefixRangeEnd(pfx)
		return append(ops,
			clientv3.OpGet(pfx, append(last, clientv3.WithRange(pfx+sharedTag), clientv3.WithLimit(1))...),
			clientv3.OpGet(pfx+"~s;", append(last, clientv3.WithRange(end), clientv3.WithLimit(1))...),
		)
	}
	return append(ops, clientv3.OpGet(pfx, append(last, clientv3.WithPrefix(), clientv3.WithLimit(int64(a.readAhead())))...))
}

// lastCreate reads the last key of a prefix by create revision. Built once:
// its option closures are a dozen allocations per Lock otherwise.
var lastCreate = clientv3.WithLastCreate()

// readAhead is how many keys ahead a waiter reads: limit, and for a permit
// twice that, so that a wake-up that leaves limit of them needs no read.
func (a admission) readAhead() int {
	if a.limit > 1 {
		return 2 * a.limit
	}
	return a.limit
}

// keyRev is a key of the queue and its create revision.
type keyRev struct {
	key string
	rev int64
}

// admit decides, from the responses of aheadReads (the keys ahead, each
// read nearest first), whether a key of this rule holds. If not, it returns
// the keys ahead that can hold it back, nearest first: the limit nearest of
// them are the ones to watch (see place). It returns ErrMismatch if an
// exclusive lock finds a permit ahead of it.
func (m *Mutex) admit(reads [][]*mvccpb.KeyValue) (held bool, known []keyRev, err error) {
	a := m.adm
	var ahead []*mvccpb.KeyValue
	for _, kvs := range reads {
		ahead = append(ahead, kvs...)
	}
	if a.shared {
		// Only the nearest exclusive key can admit us when it goes; an
		// older one still blocks, and is found when we look again.
		var near *mvccpb.KeyValue
		for _, kv := range ahead {
			if near == nil || kv.CreateRevision > near.CreateRevision {
				near = kv
			}
		}
		if near == nil {
			return true, nil, nil
		}
		if r := keyRule(m.pfx, near.Key); r.limit > 1 {
			return false, nil, m.mismatch(r)
		}
		return false, []keyRev{{string(near.Key), near.CreateRevision}}, nil
	}
	own := true
	for _, kv := range ahead {
		r := keyRule(m.pfx, kv.Key)
		if a.exclusive() && r.limit > 1 {
			return false, nil, m.mismatch(r)
		}
		own = own && !a.exclusive() && r.tag == a.tag
	}
	if len(ahead) < a.limit && own {
		return true, nil, nil
	}
	// Fewer than limit keys ahead means at most limit-1 remain, so one of
	// the limit nearest must go first: watching them misses nothing, and a
	// release wakes at most limit waiters. A key of another rule among
	// fewer than limit is an exclusive barrier, watched all the same.
	known = make([]keyRev, len(ahead))
	for i, kv := range ahead {
		known[i] = keyRev{string(kv.Key), kv.CreateRevision}
	}
	return false, known, nil
}

// tryTxn is the shape of TryLock's one Txn for a rule: put is the write of
// our key.
type tryTxn struct {
	cmps      []clientv3.Cmp
	then, els []clientv3.Op
	reads     int  // range reads before the put in then
	foreign   bool // a failed compare means ErrMismatch, whatever els found
}

// tryTxn builds TryLock's Txn. An exclusive lock puts its key only if the
// queue is empty, and otherwise reads the holder. A shared hold puts its key
// only if no key but shared ones is queued, and otherwise reads the oldest
// of them. Neither leaves a key behind when it fails. A permit cannot ask
// etcd to count keys in a compare: it compares that no key of another rule
// is queued, puts its key and reads, before it, the limit oldest keys; if
// they were limit, its key must be deleted again (a second request, made
// only when the semaphore is full).
func (a admission) tryTxn(pfx string, put clientv3.Op) tryTxn {
	first := []clientv3.OpOption{clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend)}
	switch {
	case a.shared:
		end := clientv3.GetPrefixRangeEnd(pfx)
		ranges := [][2]string{{pfx, pfx + sharedTag}, {pfx + "~s;", end}}
		var t tryTxn
		for _, r := range ranges {
			t.cmps = append(t.cmps, clientv3.Compare(clientv3.CreateRevision(r[0]), "=", 0).WithRange(r[1]))
			t.els = append(t.els, clientv3.OpGet(r[0], append(first, clientv3.WithRange(r[1]), clientv3.WithLimit(1))...))
		}
		t.then = []clientv3.Op{put}
		return t
	case a.limit > 1:
		read := clientv3.OpGet(pfx, append(first, clientv3.WithPrefix(), clientv3.WithLimit(int64(a.limit)))...)
		return tryTxn{cmps: a.foreignCmps(pfx), then: []clientv3.Op{read, put}, els: a.foreignReads(pfx),
			reads: 1, foreign: true}
	}
	return tryTxn{
		cmps: []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(pfx), "=", 0).WithPrefix()},
		then: []clientv3.Op{put},
		els:  []clientv3.Op{clientv3.OpGet(pfx, clientv3.WithFirstCreate()...)},
	}
}

// refused is TryLock's answer when the key did not hold: ErrMismatch if
// foreign or if a permit blocks a lock of another rule, and otherwise an
// *AlreadyLockedError naming the oldest key read.
func (m *Mutex) refused(reads [][]*mvccpb.KeyValue, foreign bool) error {
	var oldest *mvccpb.KeyValue
	for _, kvs := range reads {
		for _, kv := range kvs {
			if r := keyRule(m.pfx, kv.Key); foreign || (r.limit > 1 && r.tag != m.adm.tag) {
				return m.mismatch(r)
			}
			if oldest == nil || kv.CreateRevision < oldest.CreateRevision {
				oldest = kv
			}
		}
	}
	if oldest == nil { // cannot happen: the compare saw a key at this revision
		return fmt.Errorf("microlock: locking %s: the holder vanished", quoteKey(m.key))
	}
	e := &AlreadyLockedError{Key: m.key, Holder: string(oldest.Value), Token: oldest.CreateRevision}
	if e.Holder == m.opts.nodeID {
		e.note = "another lock with this Mutex's node ID, maybe in this process"
	}
	return e
}
