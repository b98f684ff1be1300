//go:build unix

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/microlock/microlock/internal/promtext"
)

// metricsServer serves run's lock metrics at /metrics (--metrics-addr), in
// the Prometheus text format and with the series of the library's
// Prometheus adapter (contrib/prometheus), for the whole of run: while it
// waits for the lock and while the command runs. The series are written by
// internal/promtext, so that the command does not depend on the Prometheus
// client.
type metricsServer struct {
	metrics *promtext.Metrics
	srv     *http.Server
	done    chan struct{} // closed when Serve returns
}

// startMetrics listens on addr and serves the metrics until stop. It says
// on w where, which tells the port when addr asked for any (":0").
func startMetrics(addr string, w io.Writer) (*metricsServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("microlock: run: --metrics-addr: %w", err)
	}
	s := &metricsServer{metrics: promtext.New(), done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.metrics)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintf(w, "microlock: run: serving metrics: %v\n", err)
		}
	}()
	fmt.Fprintf(w, "microlock: serving metrics on http://%s/metrics\n", ln.Addr())
	return s, nil
}

// stop closes the listener and every connection, and waits for Serve.
func (s *metricsServer) stop() {
	_ = s.srv.Close()
	<-s.done
}
