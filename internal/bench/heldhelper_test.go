package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"

	"github.com/microlock/microlock"
)

// helperEnv makes the test binary run a helper instead of its tests; its
// value names the helper.
const helperEnv = "MICROLOCK_BENCH_HELPER"

// heldConfigEnv carries the held-locks helper's heldConfig, in JSON.
const heldConfigEnv = "MICROLOCK_BENCH_HELD"

// heldWorkers is how many locks the helper takes or releases at once.
const heldWorkers = 16

// heldSettleMax bounds how long the helper waits, after taking every lock,
// for the client to settle before it measures: until a whole second passes
// with no request but keepalives, so that what follows an acquisition
// (microlock watches each held key, starting shortly after it is taken) is
// not counted as the cost of holding.
const heldSettleMax = 2 * time.Minute

type heldConfig struct {
	Lib       string // "microlock" or "etcd"
	Locks     int
	Hold      time.Duration
	TTL       time.Duration
	Endpoints []string
	Prefix    string
	// ProfileDir, if set, receives a heap profile taken at the end of the
	// hold, named held-<lib>-<locks>.pprof.
	ProfileDir string
}

type heldResult struct {
	Hold             time.Duration // measured
	Acquire          time.Duration // to take every lock
	Settle           time.Duration // from the last lock taken until quiet
	KeepAliveMsgs    float64       // renewals sent during Hold
	KeepAliveStreams float64       // LeaseKeepAlive streams opened during Hold
	Requests         float64       // unary calls, streams opened and stream messages during Hold
	ByMethod         map[string]int
	CPU              time.Duration // user + system, during Hold
	HeapDelta        float64       // heap in use at the end of Hold minus before the first lock, bytes
	RSSDelta         float64       // the same for the resident set
	Goroutines       int           // the same for the number of goroutines
	Lost             int
}

func runHelper() int {
	switch h := os.Getenv(helperEnv); h {
	case "held":
		var cfg heldConfig
		if err := json.Unmarshal([]byte(os.Getenv(heldConfigEnv)), &cfg); err != nil {
			fmt.Fprintln(os.Stderr, "held-locks helper: bad configuration:", err)
			return 2
		}
		r, err := heldHelper(cfg)
		if err != nil {
			fmt.Fprintln(os.Stderr, "held-locks helper:", err)
			return 1
		}
		if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
			fmt.Fprintln(os.Stderr, "held-locks helper:", err)
			return 1
		}
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "held-locks helper: goleak:", err)
			return 1
		}
		return 0
	default:
		fmt.Fprintf(os.Stderr, "unknown helper %q\n", h)
		return 2
	}
}

// heldLock is one lock of the helper, of either library.
type heldLock interface {
	lock(ctx context.Context) error
	// lost reports whether the hold has ended, by the library's own account
	// or by etcd's.
	lost(etcd heldKeys) bool
	release(ctx context.Context) error
}

func heldHelper(cfg heldConfig) (r heldResult, err error) {
	rc := newRPCCounter()
	cli, err := newClient(cfg.Endpoints, rc)
	if err != nil {
		return r, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := cli.Get(ctx, cfg.Prefix); err != nil { // connected before the baseline
		return r, err
	}

	// The baseline comes before anything is made for the locks, so that
	// everything each library keeps per lock is counted.
	heap0, rss0 := memory()
	g0 := runtime.NumGoroutine()
	locks, err := newHeldLocks(cli, cfg)
	if err != nil {
		return r, err
	}

	// Release whatever is held, however the helper ends.
	defer func() {
		rerr := forEach(locks, func(l heldLock) error {
			rctx, rcancel := context.WithTimeout(context.Background(), opTimeout)
			defer rcancel()
			return l.release(rctx)
		})
		if err == nil && rerr != nil {
			err = fmt.Errorf("releasing: %w", rerr)
		}
	}()
	start := time.Now()
	if err := forEach(locks, func(l heldLock) error { return l.lock(ctx) }); err != nil {
		return r, fmt.Errorf("locking: %w", err)
	}
	r.Acquire = time.Since(start)
	r.Settle = settle(rc)
	// The acquisitions' garbage is collected now, not in the window: a
	// collection of it there cost 7 ms/s more at N=10000 in some runs and
	// none in others, whatever the library, and it is not a cost of holding.
	runtime.GC()
	cpu0 := cpuTime()
	t0 := time.Now()
	time.Sleep(cfg.Hold)
	r.Hold = time.Since(t0)
	r.CPU = cpuTime() - cpu0
	r.count(rc.take())
	heap1, rss1 := memory()
	r.HeapDelta, r.RSSDelta = heap1-heap0, rss1-rss0
	r.Goroutines = runtime.NumGoroutine() - g0
	if cfg.ProfileDir != "" {
		if err := writeHeapProfile(filepath.Join(cfg.ProfileDir, fmt.Sprintf("held-%s-%d.pprof", cfg.Lib, cfg.Locks))); err != nil {
			return r, err
		}
	}

	r.Lost, err = countLost(ctx, cli, cfg.Prefix, locks)
	return r, err
}

// newHeldLocks makes cfg.Locks locks of cfg.Lib under cfg.Prefix, none held.
func newHeldLocks(cli *clientv3.Client, cfg heldConfig) ([]heldLock, error) {
	locks := make([]heldLock, cfg.Locks)
	for i := range locks {
		key := fmt.Sprintf("%s/%d", cfg.Prefix, i)
		switch cfg.Lib {
		case "microlock":
			m, err := microlock.New(cli, key, microlock.WithTTL(cfg.TTL))
			if err != nil {
				return nil, err
			}
			locks[i] = &microlockHeld{m: m}
		case "etcd":
			locks[i] = &etcdHeld{cli: cli, key: key, ttl: cfg.TTL}
		default:
			return nil, fmt.Errorf("unknown library %q", cfg.Lib)
		}
	}
	return locks, nil
}

// count adds up the requests of the hold, by kind and method.
func (r *heldResult) count(counts map[rpcKind]map[string]int) {
	r.ByMethod = make(map[string]int)
	for kind, byMethod := range counts {
		for method, n := range byMethod {
			r.Requests += float64(n)
			if method == "LeaseKeepAlive" {
				switch kind {
				case streamSend:
					r.KeepAliveMsgs += float64(n)
				case streamOpen:
					r.KeepAliveStreams += float64(n)
				}
			}
			r.ByMethod[fmt.Sprintf("%s(%s)", method, kind)] += n
		}
	}
}

// countLost counts the locks that are no longer held, by the library's
// account or by the keys under prefix in etcd.
func countLost(ctx context.Context, cli *clientv3.Client, prefix string, locks []heldLock) (int, error) {
	resp, err := cli.Get(ctx, prefix+"/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, err
	}
	keys := heldKeys{byKey: make(map[string]int64), byLock: make(map[string][]int64)}
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		keys.byKey[k] = kv.CreateRevision
		lock := k[:strings.LastIndex(k, "/")]
		keys.byLock[lock] = append(keys.byLock[lock], kv.CreateRevision)
	}
	lost := 0
	for _, l := range locks {
		if l.lost(keys) {
			lost++
		}
	}
	return lost, nil
}

// settle waits until a second passes in which the client sends nothing but
// keepalives, or heldSettleMax, and returns how long it waited.
// heldSettleRate is how many messages a second on a stream other than the
// renewals' still count as settled.
const heldSettleRate = 10

func settle(rc *rpcCounter) time.Duration {
	start := time.Now()
	rc.take()
	for time.Since(start) < heldSettleMax {
		time.Sleep(time.Second)
		// Quiet: no unary call, and stream messages at a steady state's
		// rate: renewals, and microlock's probes of its key watch stream (a
		// few a second per lease), not the creation of a watch per lock.
		quiet := true
		for kind, byMethod := range rc.take() {
			for method, n := range byMethod {
				if kind == unaryCall || (method != "LeaseKeepAlive" && n > heldSettleRate) {
					quiet = false
				}
			}
		}
		if quiet {
			break
		}
	}
	return time.Since(start)
}

func (k rpcKind) String() string {
	switch k {
	case unaryCall:
		return "unary"
	case streamOpen:
		return "stream"
	case streamSend:
		return "sent"
	}
	return strconv.Itoa(int(k))
}

// forEach runs fn on every lock, heldWorkers at a time, and returns the
// first error; an error does not stop the others.
func forEach(locks []heldLock, fn func(heldLock) error) error {
	var g errgroup.Group
	g.SetLimit(heldWorkers)
	for _, l := range locks {
		g.Go(func() error { return fn(l) })
	}
	return g.Wait()
}

// memory returns the heap in use and the resident set size, in bytes, after
// a garbage collection.
func memory() (heap, rss float64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			pages, _ := strconv.ParseFloat(f[1], 64)
			rss = pages * float64(os.Getpagesize())
		}
	}
	return float64(ms.HeapInuse), rss
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// heldKeys is what etcd holds under the helper's prefix: the create revision
// of every key, and of every key under each lock's own prefix.
type heldKeys struct {
	byKey  map[string]int64
	byLock map[string][]int64
}

type microlockHeld struct{ m *microlock.Mutex }

func (h *microlockHeld) lock(ctx context.Context) error { return h.m.Lock(ctx) }

func (h *microlockHeld) lost(etcd heldKeys) bool {
	select {
	case <-h.m.Done():
		return true
	default:
	}
	// The hold's key is under the lock's prefix, with a name of its own.
	return !slices.Contains(etcd.byLock[h.m.Key()], h.m.Token())
}

func (h *microlockHeld) release(ctx context.Context) error {
	err := h.m.Unlock(ctx)
	if cerr := h.m.Close(); err == nil {
		err = cerr
	}
	return err
}

type etcdHeld struct {
	cli *clientv3.Client
	key string
	ttl time.Duration
	s   *concurrency.Session
	m   *concurrency.Mutex
}

func (h *etcdHeld) lock(ctx context.Context) error {
	s, err := concurrency.NewSession(h.cli, concurrency.WithTTL(int(h.ttl.Seconds())))
	if err != nil {
		return err
	}
	h.s, h.m = s, concurrency.NewMutex(s, h.key)
	return h.m.Lock(ctx)
}

func (h *etcdHeld) lost(etcd heldKeys) bool {
	select {
	case <-h.s.Done():
		return true
	default:
	}
	rev, ok := etcd.byKey[h.m.Key()]
	return !ok || rev != h.m.Header().Revision
}

func (h *etcdHeld) release(ctx context.Context) error {
	if h.s == nil {
		return nil
	}
	err := h.m.Unlock(ctx)
	if cerr := h.s.Close(); err == nil {
		err = cerr
	}
	return err
}
