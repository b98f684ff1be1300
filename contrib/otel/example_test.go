package otel_test

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/zap"

	"github.com/microlock/microlock"
	mlotel "github.com/microlock/microlock/contrib/otel"
)

// Record a lock's metrics through a MeterProvider. A program passes the
// provider it exports with (OTLP, Prometheus, ...); this one reads them back
// by hand.
func Example() {
	client, err := clientv3.New(clientv3.Config{Endpoints: shared.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()

	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())
	metrics, err := mlotel.New(provider)
	if err != nil {
		fmt.Println(err)
		return
	}

	ctx := context.Background()
	for range 2 {
		err := microlock.WithLock(ctx, client, "example/otel/report", func(ctx context.Context) error {
			return nil // the work
		}, metrics.Option())
		if err != nil {
			fmt.Println(err)
			return
		}
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		fmt.Println(err)
		return
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.Histogram[float64]); ok && m.Name == "microlock.hold.duration" {
				for _, p := range h.DataPoints {
					end, _ := p.Attributes.Value(mlotel.EndAttr)
					fmt.Printf("%s (%s): %d holds, %s\n", m.Name, m.Unit, p.Count, end.AsString())
				}
			}
		}
	}
	// Output:
	// microlock.hold.duration (s): 2 holds, released
}
