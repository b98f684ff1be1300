package microlock

import (
	"strings"
	"testing"
)

// TestExclusiveOnly: what needs one holder at a time refuses Shared and a
// limit above 1, before any I/O, and takes WithLimit(1).
func TestExclusiveOnly(t *testing.T) {
	for _, tc := range []struct {
		opts []Option
		ok   bool
	}{
		{nil, true},
		{[]Option{WithLimit(1)}, true},
		{[]Option{WithLimit(2)}, false},
		{[]Option{Shared()}, false},
	} {
		o, err := newOptions(tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		err = o.exclusiveOnly("Lead")
		if (err == nil) != tc.ok || err != nil && !strings.HasPrefix(err.Error(), "microlock: Lead cannot be combined") {
			t.Errorf("options %d: exclusiveOnly = %v, want ok %v", len(tc.opts), err, tc.ok)
		}
	}
}

// TestKeyRule: the rule a key's name says, as admission reads it; names
// that merely look alike are exclusive.
func TestKeyRule(t *testing.T) {
	const pfx = "k/"
	for key, want := range map[string]string{
		"k/694d1c2e":           "an exclusive lock",
		"k/694d1c2e_0":         "an exclusive lock",
		"k/~s:694d_0":          "a shared lock",
		"k/~p4:694d_0":         "a semaphore of limit 4",
		"k/~p12:694d_3":        "a semaphore of limit 12",
		"k/~p1:694d_0":         "an exclusive lock", // never written: limit 1 is a Mutex
		"k/~p04:694d_0":        "an exclusive lock", // not how 4 is written
		"k/~px:694d_0":         "an exclusive lock",
		"k/~p4694d_0":          "an exclusive lock",
		"k/~s694d_0":           "an exclusive lock",
		"k/~p99999999999999:x": "an exclusive lock",
	} {
		if got := keyRule(pfx, []byte(key)).String(); got != want {
			t.Errorf("keyRule(%q) = %s, want %s", key, got, want)
		}
	}
}
