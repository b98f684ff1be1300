package microlock_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/microlock/microlock"
)

// fuzzPrefix holds every key the fuzz targets touch, so that a stray key
// anywhere they could have written is found by one read.
const fuzzPrefix = "fuzz/"

// maxPad bounds the padding a fuzz input adds to its key: past etcd's
// default request limit of 1.5 MiB and gRPC's 2 MiB message limit.
const maxPad = 2<<20 + 1024

// Bits of the fuzz targets' flags.
const (
	fuzzNodeID    = 1 << iota // pass WithNodeID(nodeID)
	fuzzTTL                   // pass WithTTL(ttl)
	fuzzNoWait                // pass NoWait()
	fuzzNilOption             // pass a nil Option
	fuzzOpShift   = 4         // the two bits above pick the call
)

// The calls a FuzzLock input makes, by (flags >> fuzzOpShift) & 3.
const (
	fuzzTryLock = iota
	fuzzLock
	fuzzWithLock
	fuzzWatch
)

// FuzzLock: whatever key, node ID, TTL and options a caller passes, the
// result is a working lock (held, reported to others with that node ID,
// released) or an error that starts with "microlock: ", never a panic, and
// nothing is left in etcd either way. The key is fuzzPrefix, the input's
// key, then pad bytes of padding, which reaches keys at and over etcd's
// request size limit without seeds of megabytes.
func FuzzLock(f *testing.F) {
	f.Add("plain", uint32(0), "node-1", int64(time.Second), uint8(fuzzNodeID|fuzzTTL))
	f.Add("nul\x00in\x00key", uint32(0), "nul\x00in\x00id", int64(0), uint8(fuzzNodeID|fuzzLock<<fuzzOpShift))
	f.Add("\xff\xfe\xfd", uint32(0), "\xc3\x28", int64(0), uint8(fuzzNodeID))
	f.Add("utf8/\u00e9\u4e16", uint32(0), "\u200b", int64(0), uint8(fuzzNodeID|fuzzWithLock<<fuzzOpShift))
	f.Add("blank-id", uint32(0), " \t\r\n\u00a0\u2003", int64(0), uint8(fuzzNodeID))
	f.Add("long-id", uint32(0), strings.Repeat("i", microlock.MaxNodeIDLen), int64(0), uint8(fuzzNodeID))
	f.Add("too-long-id", uint32(0), strings.Repeat("i", microlock.MaxNodeIDLen+1), int64(0), uint8(fuzzNodeID))
	f.Add("slash/", uint32(0), "", int64(0), uint8(fuzzWatch<<fuzzOpShift))
	f.Add("", uint32(0), "", int64(0), uint8(fuzzNilOption))
	// Keys around etcd's 1.5 MiB request limit and gRPC's 2 MiB message
	// limit. A lock request carries the key five times (the compare's key
	// and range end, the put, the read's key and range end), so a 300 KiB
	// key fits, 320 KiB meets etcd's limit and 512 KiB gRPC's.
	for _, pad := range []uint32{256 << 10, 300 << 10, 320 << 10, 512 << 10, 3 << 19, 2 << 20, maxPad} {
		f.Add("big", pad, "", int64(0), uint8(fuzzTryLock<<fuzzOpShift))
		f.Add("big", pad, "", int64(0), uint8(fuzzLock<<fuzzOpShift))
		f.Add("big", pad, "", int64(0), uint8(fuzzWatch<<fuzzOpShift))
	}
	for _, ttl := range []int64{0, -1, int64(time.Second) - 1, int64(time.Second), int64(time.Hour),
		9e9 * int64(time.Second), 9e9*int64(time.Second) + int64(time.Second), math.MaxInt64, math.MinInt64} {
		f.Add("ttl", uint32(0), "", ttl, uint8(fuzzTTL|fuzzNoWait|fuzzWithLock<<fuzzOpShift))
	}

	c := client(f)
	f.Fuzz(func(t *testing.T, key string, pad uint32, nodeID string, ttl int64, flags uint8) {
		key = fuzzPrefix + key + strings.Repeat("k", int(pad%maxPad))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		defer noStrayKeys(t, c)
		opts := fuzzOptions(flags, nodeID, ttl)
		switch op := flags >> fuzzOpShift & 3; op {
		case fuzzTryLock, fuzzLock:
			fuzzMutex(ctx, t, c, key, op == fuzzLock, opts)
		case fuzzWithLock:
			fuzzWithLockOp(ctx, t, c, key, opts)
		case fuzzWatch:
			fuzzWatchOp(ctx, t, c, key)
		}
	})
}

// fuzzOptions returns the options that flags select.
func fuzzOptions(flags uint8, nodeID string, ttl int64) []microlock.Option {
	var opts []microlock.Option
	if flags&fuzzNodeID != 0 {
		opts = append(opts, microlock.WithNodeID(nodeID))
	}
	if flags&fuzzTTL != 0 {
		opts = append(opts, microlock.WithTTL(time.Duration(ttl)))
	}
	if flags&fuzzNoWait != 0 {
		opts = append(opts, microlock.NoWait())
	}
	if flags&fuzzNilOption != 0 {
		opts = append(opts, nil)
	}
	return opts
}

// fuzzMutex takes key with a Mutex, by Lock or TryLock, checks the hold
// and releases it, or checks the error.
func fuzzMutex(ctx context.Context, t *testing.T, c *clientv3.Client, key string, lock bool, opts []microlock.Option) {
	m, err := microlock.New(c, key, opts...)
	if err != nil {
		isMicrolockError(t, "New", err)
		return
	}
	defer m.Close()
	if lock {
		err = m.Lock(ctx)
	} else {
		err = m.TryLock(ctx)
	}
	if err != nil {
		isMicrolockError(t, "lock", err)
		return
	}
	checkHeld(t, ctx, c, m)
	t.Logf("held a %d-byte key, token %d", len(key), m.Token())
	if err := m.Unlock(ctx); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
}

// fuzzWithLockOp takes key with WithLock and checks the hold in fn, or
// checks the error, which must come before fn runs.
func fuzzWithLockOp(ctx context.Context, t *testing.T, c *clientv3.Client, key string, opts []microlock.Option) {
	var held *microlock.Mutex
	err := microlock.WithLock(ctx, c, key, func(ctx context.Context) error {
		held, _ = microlock.FromContext(ctx)
		checkHeld(t, ctx, c, held)
		t.Logf("WithLock held a %d-byte key, token %d", len(key), held.Token())
		return nil
	}, opts...)
	if err != nil {
		isMicrolockError(t, "WithLock", err)
		if held != nil {
			t.Fatalf("WithLock ran fn, then failed: %v", err)
		}
	}
}

// fuzzWatchOp watches key, which is free: the first event says so.
func fuzzWatchOp(ctx context.Context, t *testing.T, c *clientv3.Client, key string) {
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	events, err := microlock.Watch(wctx, c, key)
	if err != nil {
		isMicrolockError(t, "Watch", err)
		return
	}
	if ev := <-events; ev.Type != microlock.Unlocked || ev.Key != key {
		t.Fatalf("first Watch event %+v, want Unlocked for the key", ev)
	}
	wcancel()
	for range events {
	}
}

// checkHeld checks a hold of m from another Mutex's point of view: the lock
// is taken, by m's node ID and token, under the key the caller gave.
func checkHeld(t *testing.T, ctx context.Context, c *clientv3.Client, m *microlock.Mutex) {
	t.Helper()
	if m.Token() <= 0 {
		t.Fatalf("held with token %d", m.Token())
	}
	other, err := microlock.New(c, m.Key())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	var ale *microlock.AlreadyLockedError
	err = other.TryLock(ctx)
	if !errors.As(err, &ale) || ale.Key != m.Key() || ale.Holder != m.NodeID() || ale.Token != m.Token() {
		t.Fatalf("another Mutex's TryLock = %.200v, want *AlreadyLockedError naming node %.100q, token %d", err, m.NodeID(), m.Token())
	}
}

func isMicrolockError(t *testing.T, what string, err error) {
	t.Helper()
	t.Logf("%s: %.200v", what, err)
	if !strings.HasPrefix(err.Error(), "microlock: ") {
		t.Fatalf("%s = %.300v, want an error starting with \"microlock: \"", what, err)
	}
}

// noStrayKeys fails if anything is left under fuzzPrefix once the keys that
// are deleted in the background have had time to go.
func noStrayKeys(t *testing.T, c *clientv3.Client) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.Get(ctx, fuzzPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(), clientv3.WithLimit(3))
		cancel()
		if err != nil {
			t.Fatalf("listing %s: %v", fuzzPrefix, err)
		}
		if len(resp.Kvs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d stray keys, the first %.200q", resp.Count, resp.Kvs[0].Key)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// FuzzForeignHolder: a key under the lock's prefix written by someone else,
// with any name and any value (empty, binary, up to 1 MiB), is reported as
// the holder by Watch and by TryLock's *AlreadyLockedError, byte for byte,
// and the lock is free once it is gone.
func FuzzForeignHolder(f *testing.F) {
	f.Add([]byte(""), "", uint32(0))
	f.Add([]byte("\x00\xff\xfe\x1b[2J\r\n"), "x", uint32(0))
	f.Add([]byte("node"), "a/b/c", uint32(0))
	f.Add([]byte("\xc3\x28"), "\x00", uint32(0))
	f.Add([]byte("huge"), "big", uint32(1<<20))

	c := client(f)
	f.Fuzz(func(t *testing.T, value []byte, suffix string, pad uint32) {
		key := fuzzPrefix + "foreign"
		value = append(value, make([]byte, pad%(1<<20+1))...)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		defer noStrayKeys(t, c)
		put, err := c.Put(ctx, key+"/"+suffix, string(value))
		if err != nil {
			t.Skipf("etcd refused the foreign key: %.200v", err)
		}
		defer func() {
			if _, err := c.Delete(ctx, key+"/"+suffix); err != nil {
				t.Fatal(err)
			}
		}()
		token := put.Header.Revision

		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		events, err := microlock.Watch(wctx, c, key)
		if err != nil {
			t.Fatalf("Watch: %.300v", err)
		}
		ev := <-events
		wcancel()
		for range events {
		}
		if ev.Type != microlock.Locked || ev.Holder != string(value) || ev.Token != token {
			t.Fatalf("Watch saw %v by a %d-byte holder, token %d; want locked by the %d-byte value, token %d",
				ev.Type, len(ev.Holder), ev.Token, len(value), token)
		}

		m, err := microlock.New(c, key)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		var ale *microlock.AlreadyLockedError
		err = m.TryLock(ctx)
		if !errors.As(err, &ale) || ale.Holder != string(value) || ale.Token != token || ale.Key != key {
			t.Fatalf("TryLock = %.300v, want *AlreadyLockedError with the %d-byte value, token %d", err, len(value), token)
		}
		isMicrolockError(t, "TryLock", err)

		if _, err := c.Delete(ctx, key+"/"+suffix); err != nil {
			t.Fatal(err)
		}
		if err := m.TryLock(ctx); err != nil {
			t.Fatalf("TryLock once the foreign key is gone: %v", err)
		}
		if err := m.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
