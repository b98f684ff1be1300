// Package chaos is microlock's fault-injection suite, in the manner of
// Jepsen: worker processes contend for one lock on a real 3-member etcd
// cluster and increment a counter under it, while a nemesis partitions,
// kills and pauses etcd members and workers on a seeded schedule. The
// history that the workers record, together with the revision history that
// etcd keeps, is then checked for lost updates, acknowledged writes that are
// missing, out-of-order fencing tokens, writes that landed while their
// writer did not hold the lock, loss signals that came after another node
// took over, and stalls.
//
// The lock workload runs twice, once per defence. The plain variant relies on the
// loss signal alone: its unguarded Put uses fn's context. The fenced variant
// relies on the fence alone: its Txn, guarded by IsOwner, goes out whatever
// the context says, so that etcd, not the worker, must refuse a late write.
// A violation is allowed only with evidence that no lock could have
// prevented it (see the Excuse constants): a worker paused while it held the
// lock, or, for the plain variant, a write held up in a paused member. The
// fenced variant is allowed no late write at all. A violation that etcd
// caused by revoking a lease its holder kept renewing (a stalled leader that
// resumes, etcd issues #12528 and #15247) is neither allowed nor forbidden
// but a category of its own, CategoryEtcd, reported case by case with its
// evidence: the workers' lease requests, with the times they were sent and
// answered, and the members' logs, which the run keeps.
//
// The leader variant runs microlock.Lead in every worker instead: each term
// writes as the fenced variant does, and the checker also counts terms that
// started without their key, lost terms after which the worker did not
// campaign again, and the time from a fault that deposed a leader to the
// next leader (leader.go).
//
// This package holds what the test and the worker program share: the
// shared clock, the records, the schedule, the checker and the report. The
// run itself is in the package's test (go test ./internal/chaos); the worker
// program is in the worker directory.
package chaos
