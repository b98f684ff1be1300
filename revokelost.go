package microlock

import (
	"context"
	"time"
)

// revokeLostFor bounds how long a lost lease is still revoked in the
// background: an etcd outage longer than this leaves the lost holds' keys to
// expire with the TTL that etcd restores them with.
const revokeLostFor = time.Hour

// revokeAfterLoss keeps trying to revoke the lease after its holds were
// declared lost (the deadline passed, or a renewal failed for good) while the
// process lives on. etcd could not be reached, so it may still keep the
// lease and its keys; and when it comes back (a restart, a new leader) it
// restores every lease with a fresh TTL (etcd issue #9395), so a lost hold's
// key would block its lock for one more TTL after etcd is healthy again. The
// keys go the moment etcd answers the revoke.
//
// The first attempt waits until etcd itself could expire the lease (the
// loss deadline plus its margin): the lost holds' work was told to stop at
// the deadline, and a revoke must not let the next holder in any sooner
// than etcd could have, or work that is still stopping would lose the
// margin the deadline gave it. In an outage longer than that, the revoke
// lands the moment etcd answers again.
//
// It runs on the lease's goroutine after done is closed, so that Close does
// not wait for an outage to end: it stops when etcd answers, when the
// client is closed, or after revokeLostFor. Every hold on the lease has ended
// by now, so nothing still relies on the lease.
func (l *lease) revokeAfterLoss() {
	t := time.NewTimer(time.Until(earliestExpiry(l.currentDeadline(), l.ttl)))
	select {
	case <-t.C:
	case <-l.etcd.Ctx().Done():
		t.Stop()
		return
	}
	ctx, cancel := context.WithTimeout(l.etcd.Ctx(), revokeLostFor)
	defer cancel()
	l.revokeWithin(ctx)
}
