package etcdtest

import (
	"testing"
	"time"
)

// TestPeerProxySenders checks that every peer proxy learns, from the request
// heads, which member each connection comes from: Isolate's "from m" rule
// depends on it, and the black-box tests would not notice its loss, since
// the "into m" rule alone already fails most requests.
func TestPeerProxySenders(t *testing.T) {
	c := Start(t, 3, WithPeerProxies())
	for _, m := range c.Members {
		want := make(map[uint64]bool)
		for _, o := range c.Members {
			if o != m {
				want[o.ID()] = true
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			got := make(map[uint64]bool)
			for _, from := range m.peer.Senders() {
				got[from] = true
			}
			missing := 0
			for id := range want {
				if !got[id] {
					missing++
				}
			}
			if missing == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("peer proxy of %s: senders %v, want all of %v", m.Name, got, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}
