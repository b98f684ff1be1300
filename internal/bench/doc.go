// Package bench holds microlock's benchmarks: microlock, etcd's
// concurrency.Mutex and raw etcd requests, side by side against one fresh
// single-node etcd that TestMain starts, so that each ratio compares numbers
// taken from the same server in the same run.
//
// `make bench` (or `make bench-short`) runs them and prints a table of
// medians, ratios and targets, made by ./cmd/benchtable. By hand:
//
//	go test -run '^$' -bench . -benchtime 2s -count 3 ./internal/bench
//
// The benchmarks:
//
//   - Floor: the raw etcd requests a lock cycle cannot do without: a
//     put-if-absent Txn followed by a Delete (two commits), one write Txn, one
//     linearizable Get.
//   - Uncontended: one lock cycle on one client, on a key nobody else wants:
//     microlock's WithLock with an empty fn and Mutex.Lock+Unlock; etcd's
//     Mutex with one Session reused, and with a new Session per cycle. Each
//     reports allocations per cycle, in the first and the second half of its
//     cycles too, and how much the heap and the goroutines grew per cycle in
//     the second half: a leak shows there.
//   - TryLockFail: TryLock on a key that another client holds.
//   - SideBySide: the uncontended cycles and the floor (and microlock's two
//     requests sent by hand), then the TryLock failures and a one-Txn floor,
//     run in turn, one of each per op. On a shared machine, benchmarks run one
//     after the other meet different moments of the noise; run in turn, both
//     sides of a ratio meet the same ones. The table's ratios come from here.
//   - Growth: microlock's Mutex and etcd's take turns cycling a key of their
//     own 10,000 times (3,000 with -short): does a cycle get dearer as deleted
//     keys pile up in etcd's index between compactions?
//   - Contention: C contenders on one key, each with its own client, looping
//     lock → tiny critical section → unlock: handoffs per second, handoff
//     latency (the previous holder's Unlock returned → the next holder's Lock
//     returned) p50 and p99, and fairness (most / fewest acquisitions of any
//     contender).
//   - Keys: K goroutines on one shared client, each cycling a key of its own;
//     the two libraries, and microlock's two requests sent by hand, take
//     turns. Cycles per second, and client and etcd CPU per cycle.
//   - Auth: what username/password authentication costs, on two fresh etcds
//     alike but for it, one per side: Mutex.Lock+Unlock and Mutex.Renew with
//     authentication and without, in turn, and two contenders on one key,
//     side after side. Each reports each side's etcd CPU per op, and the
//     Authenticate calls the server handled per op (from its gRPC metrics).
//   - Semaphore: 16 contenders, each with its own client, want one of 4
//     slots and hold it 5 ms: a microlock semaphore (WithLimit(4)), 4
//     microlock Mutexes tried in turn, and 4 independent keys (the ceiling).
//     Holds per second, p99 wait, fairness, and for the semaphore the watch
//     events its clients were delivered per release (the wake-ups).
//   - ReadHeavy: 8 contenders hold one key for 2 ms, shared nine times in
//     ten and exclusive the tenth: microlock's Shared against etcd's
//     recipes.RWMutex. Holds per second, p99 wait, fairness.
//   - Held: a separate process (this test binary, run again) holds N locks on
//     one client for 30 s (10 s with -short), TTL 5 s: keepalive messages per
//     second, client CPU, memory and goroutines per held lock, and locks
//     lost. etcd's side holds one Session per lock, as its users do.
//
// MICROLOCK_BENCH_DATADIR=dir keeps etcd's data under dir, on disk and synced,
// instead of on tmpfs and unsynced. MICROLOCK_BENCH_PROFILE_DIR=dir has each
// held-locks process write a heap profile there.
package bench
