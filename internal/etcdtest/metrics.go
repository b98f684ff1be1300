package etcdtest

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// GRPCHandled returns how many calls of the gRPC method (its bare name, such
// as "Authenticate") the member has handled, whatever their outcome, from
// the grpc_server_handled_total series of its /metrics. It fails if the
// member exports no such series.
func (m *Member) GRPCHandled(ctx context.Context, method string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.ClientURL+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	// No connection kept: nothing left for goleak to find.
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0, fmt.Errorf("reading etcd's metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("reading etcd's metrics: %s", resp.Status)
	}
	var n float64
	found := false
	label := `grpc_method="` + method + `"`
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "grpc_server_handled_total{") || !strings.Contains(line, label) {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			return 0, fmt.Errorf("etcd's metrics: %q: %w", line, err)
		}
		n += v
		found = true
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading etcd's metrics: %w", err)
	}
	if !found {
		return 0, fmt.Errorf("etcd's metrics have no grpc_server_handled_total for %s", method)
	}
	return n, nil
}
