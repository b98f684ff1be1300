package chaos

import (
	"strconv"
	"strings"
)

// The admission variants run the workload on a counting semaphore and on a
// shared lock. Their holds do not increment the counter (holds of a
// semaphore or shared lock run together, so a read-modify-write under them
// would lose updates by design): each hold writes the counter once, with a
// Txn guarded by IsOwner and sent with a context of its own, as the fenced
// variant does, recording who wrote it. The checker then proves from etcd's
// history that every such write landed while its writer's key was in the
// queue and admitted by its rule, and from the workers' records that no
// more held at once than the rule allows.
const (
	// Semaphore holds are permits of a semaphore of limit SemaphoreLimit.
	Semaphore Variant = "semaphore"
	// SharedLock holds are shared, except every ExclusiveEvery-th call of
	// each worker, which is exclusive.
	SharedLock Variant = "shared"
)

const (
	SemaphoreLimit = 3
	ExclusiveEvery = 3
)

// Admission rules of a Record.
const (
	RulePermit    = "permit"
	RuleShared    = "shared"
	RuleExclusive = "exclusive"
)

// Admission reports whether v is an admission variant.
func (v Variant) Admission() bool { return v == Semaphore || v == SharedLock }

// RuleOf is the rule of a worker's seq-th call in variant v.
func RuleOf(v Variant, seq int64) string {
	switch {
	case v == Semaphore:
		return RulePermit
	case v == SharedLock && seq%ExclusiveEvery != 0:
		return RuleShared
	}
	return RuleExclusive
}

// keyRule is the rule a lock key was written with, from its name after the
// queue's prefix (microlock's layout: "~s:" shared, "~p<n>:" a permit of
// limit n, anything else exclusive), and the limit of a permit.
func keyRule(prefix, key string) (rule string, limit int) {
	name := strings.TrimPrefix(key, prefix)
	switch {
	case strings.HasPrefix(name, "~s:"):
		return RuleShared, 1
	case strings.HasPrefix(name, "~p"):
		if i := strings.IndexByte(name, ':'); i > 2 {
			if n, err := strconv.Atoi(name[2:i]); err == nil && n > 1 {
				return RulePermit, n
			}
		}
	}
	return RuleExclusive, 1
}
