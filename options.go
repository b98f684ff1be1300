package microlock

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v4"
)

// The bounds that options are checked against, and the defaults of those
// not given.
const (
	// DefaultTTL is the lease TTL a lock asks for when WithTTL is not given.
	DefaultTTL = 10 * time.Second
	// MinTTL is the smallest TTL WithTTL accepts. etcd may grant more (its
	// minimum lease TTL depends on the election timeout); the library always
	// works with the TTL etcd granted.
	MinTTL = time.Second
	// MaxTTL is the largest TTL WithTTL accepts: etcd's own limit on a lease.
	MaxTTL = 9_000_000_000 * time.Second
	// MaxNodeIDLen bounds the node ID, which is stored as the lock's value.
	MaxNodeIDLen = 4096
	// ReleaseTimeout bounds the release that WithLock performs after fn
	// returns, whatever the state of the caller's context.
	ReleaseTimeout = 5 * time.Second
)

// An Option configures a Mutex (New) or a WithLock call. Watch takes none.
type Option interface {
	apply(*options)
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

type options struct {
	ttl        time.Duration
	nodeID     string
	newBackoff func() backoff.BackOff
	hook       func(Event)
	noWait     bool
	maxHold    time.Duration // 0: none
	limit      int           // WithLimit; 0 when not given
	shared     bool          // Shared
	errs       []error       // collected while applying, reported by validate
}

// WithTTL sets the lease TTL. etcd grants whole seconds: ttl is rounded up to
// the next second, and etcd may grant more than asked. A TTL below MinTTL or
// above MaxTTL is rejected.
func WithTTL(ttl time.Duration) Option {
	return optionFunc(func(o *options) {
		if ttl < MinTTL {
			o.errs = append(o.errs, fmt.Errorf("microlock: TTL %v is below the minimum of %v", ttl, MinTTL))
			return
		}
		if ttl > MaxTTL {
			o.errs = append(o.errs, fmt.Errorf("microlock: TTL %v is above etcd's maximum of %v", ttl, MaxTTL))
			return
		}
		o.ttl = ttl
	})
}

// WithNodeID sets the ID stored as the lock's value while this node holds it
// (Microlock's node_id). It is what AlreadyLockedError.Holder and Watch
// report. The default is the hostname and the process ID. An ID that is empty,
// only white space, not valid UTF-8 or longer than MaxNodeIDLen is rejected.
func WithNodeID(id string) Option {
	return optionFunc(func(o *options) {
		switch {
		case strings.TrimSpace(id) == "":
			o.errs = append(o.errs, errors.New("microlock: empty node ID"))
		case !utf8.ValidString(id):
			o.errs = append(o.errs, errors.New("microlock: node ID is not valid UTF-8"))
		case len(id) > MaxNodeIDLen:
			o.errs = append(o.errs, fmt.Errorf("microlock: node ID is %d bytes, more than %d", len(id), MaxNodeIDLen))
		default:
			o.nodeID = id
		}
	})
}

// WithBackoff sets the retry policy for transient etcd errors while acquiring
// (no leader, unreachable endpoint, timeouts). newPolicy is called for a fresh
// policy at the start of each retry sequence; when the policy returns
// backoff.Stop, the last error is returned. The default is exponential from
// 50 ms to 2 s with jitter, without limit other than the context.
func WithBackoff(newPolicy func() backoff.BackOff) Option {
	return optionFunc(func(o *options) {
		if newPolicy == nil {
			o.errs = append(o.errs, errors.New("microlock: nil backoff policy"))
			return
		}
		o.newBackoff = newPolicy
	})
}

// OnEvent registers a hook for this Mutex's lifecycle events: Queued,
// Acquired, GaveUp, Renewed, Released, Lost and Retrying, with the
// durations metrics graph (see Event). Every Acquired is followed, in time,
// by one Released or Lost; a Lock that reported Queued ends with Acquired or
// GaveUp. A hook sees its Mutex's events one
// at a time, in order, after the state change they report. Events caused by
// a call on the Mutex run on the caller's goroutine; events raised by the
// renewal loop or key watch that locks share run on a goroutine of the
// hold's own, so that a slow hook delays only this Mutex's events. Close
// waits for them: a hook must not call its Mutex's Close. Several OnEvent
// options all run, in the order given, each event to every hook before the
// next event.
func OnEvent(hook func(Event)) Option {
	return optionFunc(func(o *options) {
		if hook == nil {
			o.errs = append(o.errs, errors.New("microlock: nil event hook"))
			return
		}
		if prev := o.hook; prev != nil {
			o.hook = func(ev Event) { prev(ev); hook(ev) }
			return
		}
		o.hook = hook
	})
}

// NoWait makes WithLock, and Lock on a Mutex made with it, fail at once
// with *AlreadyLockedError when another holder has the lock, instead of
// waiting for it: one TryLock, with transient etcd errors retried by the
// WithBackoff policy.
func NoWait() Option {
	return optionFunc(func(o *options) { o.noWait = true })
}

// newOptions applies opts over the defaults and validates the result; it does
// no I/O.
func newOptions(opts []Option) (*options, error) {
	o := &options{ttl: DefaultTTL, newBackoff: defaultBackoff}
	for _, opt := range opts {
		if opt == nil {
			o.errs = append(o.errs, errors.New("microlock: nil option"))
			continue
		}
		opt.apply(o)
	}
	if o.shared && o.limit != 0 {
		o.errs = append(o.errs, errors.New("microlock: WithLimit and Shared cannot be combined: a semaphore's permits and a shared lock's holds are different admission rules"))
	}
	if len(o.errs) > 0 {
		return nil, errors.Join(o.errs...)
	}
	if o.nodeID == "" {
		o.nodeID = defaultNodeID()
	}
	return o, nil
}

// ttlSeconds is the TTL to ask etcd for: whole seconds, rounded up.
func (o *options) ttlSeconds() int64 {
	return int64((o.ttl + time.Second - 1) / time.Second)
}

// defaultNodeID is computed once: it cannot change while the process runs,
// and WithLock should not pay a system call for it on every call.
var defaultNodeID = sync.OnceValue(func() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown-host"
	}
	return host + ":" + strconv.Itoa(os.Getpid())
})

func defaultBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 50 * time.Millisecond
	b.MaxInterval = 2 * time.Second
	b.RandomizationFactor = 0.5
	b.Multiplier = 2
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}
