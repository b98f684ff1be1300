package prometheus_test

import (
	"context"
	"testing"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"

	"github.com/microlock/microlock"
	mlprom "github.com/microlock/microlock/contrib/prometheus"
)

// BenchmarkEvents is the uncontended WithLock cycle of the root's benchmarks
// (internal/bench), with no hook and with this adapter attached, in one
// process against one etcd: what the metrics cost. make bench puts both rows
// in its table; the adapter's target is at most 5% over no hook, in time and
// in allocations per cycle.
func BenchmarkEvents(b *testing.B) {
	noop := func(context.Context) error { return nil }
	reg := prom.NewRegistry()
	m := mlprom.New()
	reg.MustRegister(m)
	for _, c := range []struct {
		name string
		opts []microlock.Option
	}{
		{"none", []microlock.Option{microlock.WithTTL(10 * time.Second)}},
		{"prometheus", []microlock.Option{microlock.WithTTL(10 * time.Second), m.Option()}},
	} {
		b.Run(c.name, func(b *testing.B) {
			cli := shared.Client(b)
			key := "bench/events/" + c.name
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			// The first call grants the client's lease; later calls share it.
			if err := microlock.WithLock(ctx, cli, key, noop, c.opts...); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := microlock.WithLock(ctx, cli, key, noop, c.opts...); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	if n, err := reg.Gather(); err != nil || len(n) == 0 {
		b.Fatalf("the adapter recorded nothing: %v", err)
	}
}
