package microlock_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/microlock/microlock"
)

// helperProcessEnv makes the test binary act as a worker process: the
// cross-process test runs several copies of it at once.
const helperProcessEnv = "MICROLOCK_TEST_WORKER"

// helperProcess loops WithLock with a non-atomic increment, as configured by
// its environment, and returns the exit code.
func helperProcess() int {
	endpoints := strings.Split(os.Getenv("WORKER_ENDPOINTS"), ",")
	key, counter := os.Getenv("WORKER_KEY"), os.Getenv("WORKER_COUNTER")
	rounds, _ := strconv.Atoi(os.Getenv("WORKER_ROUNDS"))
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for range rounds {
		err := microlock.WithLock(ctx, c, key, func(ctx context.Context) error {
			return incrementSlowly(ctx, c, counter)
		})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	return 0
}

// TestMutualExclusionAcrossProcesses: worker processes, each with its own
// client and lease, never lose an update of a non-atomic increment.
func TestMutualExclusionAcrossProcesses(t *testing.T) {
	const procs, rounds = 4, 20
	key := testKey(t)
	counter := testKey(t, "counter")
	var cmds []*exec.Cmd
	for i := range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(),
			helperProcessEnv+"=1",
			"WORKER_ENDPOINTS="+strings.Join(shared.Endpoints(), ","),
			"WORKER_KEY="+key,
			"WORKER_COUNTER="+counter,
			"WORKER_ROUNDS="+strconv.Itoa(rounds),
		)
		cmd.Stderr = &prefixWriter{t: t, prefix: fmt.Sprintf("worker %d: ", i)}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("worker %d: %v", i, err)
		}
	}
	if got := readCounter(t, client(t), counter); got != procs*rounds {
		t.Fatalf("counter = %d, want %d: updates were lost", got, procs*rounds)
	}
}

type prefixWriter struct {
	t      testing.TB
	prefix string
}

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.t.Log(w.prefix + strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
