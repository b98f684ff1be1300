package chaos

import "time"

// Kind is a kind of fault the nemesis injects.
type Kind string

const (
	// WorkerPartition cuts one worker, the lock's holder if it can be
	// caught holding, off from every member for longer than the TTL.
	WorkerPartition Kind = "worker partition"
	// MemberPartition cuts one member off from the other two: a minority
	// and a majority side. Clients still reach every member.
	MemberPartition Kind = "member partition"
	// LeaderKill kills the raft leader with SIGKILL and restarts it.
	LeaderKill Kind = "leader kill"
	// FollowerKill kills a follower with SIGKILL and restarts it.
	FollowerKill Kind = "follower kill"
	// MemberPause stops one member with SIGSTOP and resumes it.
	MemberPause Kind = "member pause"
	// WorkerPause stops the worker that holds the lock with SIGSTOP for
	// longer than the TTL, then resumes it.
	WorkerPause Kind = "worker pause"
)

// Kinds lists every fault kind, in the order reports show them.
func Kinds() []Kind {
	return []Kind{WorkerPartition, MemberPartition, LeaderKill, FollowerKill, MemberPause, WorkerPause}
}

// Fault is one fault as injected. Times are Now readings.
type Fault struct {
	Kind   Kind   `json:"kind"`
	Target string `json:"target"` // worker node ID or member name
	Start  int64  `json:"start"`  // when it took effect
	Heal   int64  `json:"heal"`   // when it was undone: resumed, healed, or restarted and serving
	// Holding says, for a worker fault, that etcd still named the target as
	// the lock's holder after the fault took effect.
	Holding bool `json:"holding"`
	// Token is, for a worker fault that caught the holder, the fencing
	// token of the hold it caught.
	Token int64 `json:"token,omitempty"`
}

// Duration is how long the fault lasted.
func (f Fault) Duration() time.Duration { return time.Duration(f.Heal - f.Start) }
