// Package microlock is a distributed lock on etcd v3: one holder at a time
// per key, across processes and machines. It is Microlock, the Node.js
// library, made again for Go, context-first.
//
// # Use
//
// The centre is one call. WithLock waits for the lock, runs fn while holding
// it, and releases it:
//
//	err := microlock.WithLock(ctx, client, "jobs/nightly-report", func(ctx context.Context) error {
//		return buildReport(ctx) // ctx is cancelled if the lock is lost
//	})
//
// For more control, New returns a Mutex with TryLock, Lock, Unlock, Renew and
// Close, as in Microlock. Watch reports who holds a key, whoever took it;
// Holder reads it once.
//
// Lead is a leader loop on the same machinery: it campaigns in arrival
// order, runs fn for each term this node leads, with the same early loss
// signal, and campaigns again after a lost term until ctx is done. Its
// layout is that of etcd's concurrency.Election and etcdctl elect. The
// leader can change the value it advertises with Proclaim, and WithMaxHold
// bounds how long any hold or term can last.
//
// # Semaphores and shared locks
//
// WithLimit(n) makes a lock a counting semaphore: at most n holders at once,
// in arrival order. Shared() makes it a shared (read) hold: shared holders
// hold together, and every exclusive holder (a Mutex, etcd's
// concurrency.Mutex, etcdctl lock) excludes them and is excluded by them. A
// writer that queued first blocks the readers that come after it. Both keep
// everything above and below: the same queue, the loss signal, Done, Err,
// IsOwner, events and WithLock. Clients that disagree on a key's rule are
// refused with ErrMismatch at acquisition; Watch and Holder report how many
// hold the key (Event.Holders) and who (Event.HeldBy).
//
// # The safety contract
//
// A lock is a key under key+"/" bound to an etcd lease; the holder is the key
// with the smallest create revision, its value the holder's node ID. This is
// the layout of etcd's concurrency.Mutex, its Lock RPC and etcdctl lock, so
// they all exclude each other on the same key. Waiters queue in arrival order
// and each watches only the one ahead of it.
//
// The lease is renewed automatically every third of its TTL. The library
// does not trust the etcd client to say when a lease is gone: it notes the
// time just before sending each renewal (t0) and, with the TTL etcd granted
// (T), knows the server cannot expire the lease before t0+T. It declares the
// hold lost at t0 + T·(1−0.001) − max(250ms, T/10), on the monotonic clock,
// unless a later renewal was acknowledged. So when the holder is cut off from
// etcd, fn's context is cancelled, Done is closed and a Lost event is
// emitted before etcd can let anyone else take the lock. A hold also ends at
// once if its key is deleted or its lease revoked from outside.
//
// Every hold carries a fencing token, Token: the create revision of its key
// in etcd, which strictly increases from one holder of a key to the next.
// IsOwner returns an etcd comparison that is true only while the hold lasts;
// put it in your own Txn and a write from a stale holder cannot land. Tokens
// order exclusive holders only: concurrent permits or shared holders are not
// ordered among themselves, so a fence that refuses older tokens is
// meaningful only for an exclusive lock; IsOwner guards every kind.
//
// # What no lock can promise
//
// The loss signal is a local deadline. A process that is paused past it —
// a long garbage collection, SIGSTOP, a frozen virtual machine, a clock that
// jumps the monotonic counter — can wake up and, for a moment, act as if it
// still held the lock while someone else does. No lock service can prevent
// that: the check and the write are not one atomic step. Fencing can: when
// the resource you protect checks the token (or, in etcd, IsOwner) on every
// write, a stale holder's writes are refused. The same holds for a request
// that left the client while the lock was held but was held up by a paused or
// partitioned etcd member and applied after the hold ended: only a fenced
// write is refused then. Use fencing for anything whose correctness matters;
// use the loss signal to stop work early.
//
// Mutual exclusion relies on etcd's own guarantees: a linearizable cluster
// whose members' clocks run at nearly the same rate (the library allows
// 0.1%).
//
// # Costs
//
// TryLock, Unlock and an uncontended Lock are one etcd request each once the
// client's lease is granted (a TryLock on a full semaphore deletes the key
// it wrote: two). Leases are shared per client and TTL and kept
// for a few seconds after use, so renewal work grows with the number of
// leases, not with the number of locks held, and a loop of WithLock calls
// does not grant and revoke a lease per call. A lease's renewal goroutine
// ends when it has been unused for a while or when its client is closed.
//
// The leases live in one table per process, the package's only state:
// WithLock takes nothing but a client, so a lease has to outlive the calls
// that use it. The table costs an entry and a renewal goroutine per client
// and TTL in use, and an unused lease renewed for 10 s before it is revoked;
// closing the client ends its leases at once, and Close on a Mutex revokes
// its lease if no other lock uses it.
//
// # Metrics
//
// OnEvent hooks see every step of a lock with what metrics graph: the wait
// (Queued with the place in the queue, then Acquired or GaveUp with
// Waited), the hold (Released or Lost with Held; Lost with a LossReason),
// and each renewal (Renewed with its Latency and the Margin left before the
// loss deadline). Without a hook they cost nothing. Adapters for
// Prometheus and OpenTelemetry live in nested modules of their own,
// github.com/microlock/microlock/contrib/prometheus and .../contrib/otel,
// so that this module depends on neither.
//
// # Errors
//
// Errors start with "microlock:". Match them with errors.Is against
// ErrLocked, ErrNotOwner, ErrLockLost, ErrMaxHold, ErrClosed and ErrMismatch,
// and with errors.As against *AlreadyLockedError. Errors from etcd and from the caller's
// context are wrapped, so errors.Is(err, context.Canceled) and the etcd
// client's rpctypes errors match too.
package microlock
