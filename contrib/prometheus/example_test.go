package prometheus_test

import (
	"context"
	"fmt"
	"path"
	"time"

	prom "github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/microlock/microlock"
	mlprom "github.com/microlock/microlock/contrib/prometheus"
)

// Record the locks of a job runner whose keys carry job IDs, under one key
// label. A program serves the registry with promhttp:
// http.Handle("/metrics", promhttp.HandlerFor(registry, promhttp.HandlerOpts{})).
func Example() {
	client, err := clientv3.New(clientv3.Config{Endpoints: shared.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()

	metrics := mlprom.New(mlprom.WithKeyLabel(func(key string) string {
		return path.Dir(key) + "/*" // "example/jobs/42" → "example/jobs/*"
	}))
	registry := prom.NewRegistry()
	registry.MustRegister(metrics)

	ctx := context.Background()
	for _, job := range []string{"example/jobs/41", "example/jobs/42", "example/jobs/42"} {
		err := microlock.WithLock(ctx, client, job, func(ctx context.Context) error {
			return nil // the job's work
		}, metrics.Option())
		if err != nil {
			fmt.Println(err)
			return
		}
	}

	families, err := registry.Gather()
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			labels := ""
			for _, l := range m.GetLabel() {
				labels += fmt.Sprintf(" %s=%q", l.GetName(), l.GetValue())
			}
			switch f.GetName() {
			case "microlock_hold_seconds":
				fmt.Printf("%s%s: %d holds\n", f.GetName(), labels, m.GetHistogram().GetSampleCount())
			case "microlock_held":
				fmt.Printf("%s%s: %v now\n", f.GetName(), labels, m.GetGauge().GetValue())
			}
		}
	}
	// Output:
	// microlock_held key="example/jobs/*": 0 now
	// microlock_hold_seconds end="released" key="example/jobs/*": 3 holds
}
