package microlock

import "fmt"

// LossReason says why a hold was lost: Event.Reason on a Lost event. A
// program can switch on it; a metrics adapter uses String as a label value.
type LossReason int

const (
	// LossNone: the event is not a loss.
	LossNone LossReason = iota
	// LossDeadline: no renewal was acknowledged before the local loss
	// deadline, which falls before etcd could expire the lease (etcd
	// unreachable, without a leader, or too slow).
	LossDeadline
	// LossKeyDeleted: the hold's key was deleted, by hand, by another
	// program, or by etcd with its lease; or it was gone when Unlock came.
	LossKeyDeleted
	// LossLeaseRevoked: etcd answered that it no longer knows the lease: it
	// expired or was revoked on the server.
	LossLeaseRevoked
	// LossClientClosed: the etcd client was closed while the lock was held.
	LossClientClosed
	// LossRenewFailed: etcd refused a renewal for good (permission, auth),
	// so the lease could not be kept.
	LossRenewFailed
	// LossWatchFailed: the hold's key could no longer be watched, so that
	// its deletion would have gone unseen.
	LossWatchFailed
	// LossMaxHold: the hold reached its WithMaxHold limit, and its lease
	// was no longer renewed; Err matches ErrMaxHold.
	LossMaxHold
)

var lossReasonNames = [...]string{
	LossNone:         "none",
	LossDeadline:     "deadline",
	LossKeyDeleted:   "key_deleted",
	LossLeaseRevoked: "lease_revoked",
	LossClientClosed: "client_closed",
	LossRenewFailed:  "renew_failed",
	LossWatchFailed:  "watch_failed",
	LossMaxHold:      "max_hold",
}

// String returns the reason in snake case ("deadline", "key_deleted",
// "lease_revoked", "client_closed", "renew_failed", "watch_failed",
// "max_hold"), the
// form metrics use as a label value.
func (r LossReason) String() string {
	if r >= 0 && int(r) < len(lossReasonNames) {
		return lossReasonNames[r]
	}
	return fmt.Sprintf("LossReason(%d)", int(r))
}
