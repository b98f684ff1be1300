# microlock's build. Tools are pinned here and installed into ./bin; the etcd
# server and etcdctl are built from the versions pinned in tools/go.mod.

GO          ?= go
BIN         := $(CURDIR)/bin
export GOBIN := $(BIN)

STATICCHECK_VERSION := v0.8.2

GOTESTFLAGS ?= -race -shuffle=on -count=1 -timeout 20m

# Nested modules with their own go.mod (the metrics adapters): `./...` in the
# root does not reach them, so every target below visits each in turn.
NESTED_MODULES := contrib/prometheus contrib/otel
# in-modules runs a command in each nested module, stopping at the first failure.
in-modules = @for m in $(NESTED_MODULES); do echo "cd $$m && $(1)"; (cd $$m && $(1)) || exit 1; done

.PHONY: test check fmt-check vet tidy-check lint etcd etcdctl clean

## test: the full check that CI runs: formatting, vet, tidy, and every test
## with the race detector, shuffled, against real etcd servers.
test: check etcd
	$(GO) test $(GOTESTFLAGS) ./...
	$(call in-modules,$(GO) build ./... && $(GO) test $(GOTESTFLAGS) ./...)
	$(MAKE) --no-print-directory fuzz-short

## check: the fast static checks.
check: fmt-check vet tidy-check

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	$(call in-modules,$(GO) vet ./...)

tidy-check:
	$(GO) mod tidy -diff
	cd tools && $(GO) mod tidy -diff
	cd tools/etcd-3.5 && $(GO) mod tidy -diff
	cd tools/etcd-3.6 && $(GO) mod tidy -diff
	$(call in-modules,$(GO) mod tidy -diff)

## lint: staticcheck, pinned.
lint: $(BIN)/staticcheck
	$(BIN)/staticcheck ./...
	$(call in-modules,$(BIN)/staticcheck ./...)

$(BIN)/staticcheck:
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

## chaos: the fault-injection suite's full profile, about 30 minutes: the
## plain and fenced variants, then the semaphore and shared-lock variants,
## then the leader variant, every fault kind, a random seed
## (MICROLOCK_CHAOS_SEED=n replays one). The tables go to bin/chaos/report.txt,
## report-admission.txt and report-leader.txt, the histories beside them.
## Every `go test ./...` runs the short profile (fixed seed, about 2.5 minutes).
CHAOS_OUT := $(BIN)/chaos
.PHONY: chaos
chaos: etcd
	@mkdir -p $(CHAOS_OUT)
	MICROLOCK_CHAOS=full MICROLOCK_CHAOS_REPORT=$(CHAOS_OUT)/report.txt \
		$(GO) test -race -count=1 -timeout 60m -v -run '^TestChaos(Admission|Leader)?$$' \
		-artifacts -outputdir $(CHAOS_OUT) ./internal/chaos

## chaos-leader: the full profile of the leader variant alone, about 7
## minutes; its table goes to bin/chaos/report-leader.txt.
.PHONY: chaos-leader
chaos-leader: etcd
	@mkdir -p $(CHAOS_OUT)
	MICROLOCK_CHAOS=full MICROLOCK_CHAOS_REPORT=$(CHAOS_OUT)/report.txt \
		$(GO) test -race -count=1 -timeout 30m -v -run '^TestChaosLeader$$' \
		-artifacts -outputdir $(CHAOS_OUT) ./internal/chaos

## etcd: build the pinned etcd server into ./bin.
etcd: $(BIN)/etcd
$(BIN)/etcd: tools/go.mod tools/go.sum
	cd tools && $(GO) build -o $(BIN)/etcd go.etcd.io/etcd/server/v3

## etcdctl: build the pinned etcdctl into ./bin.
etcdctl: $(BIN)/etcdctl
$(BIN)/etcdctl: tools/go.mod tools/go.sum
	cd tools && $(GO) build -o $(BIN)/etcdctl go.etcd.io/etcd/etcdctl/v3

## fuzz-short: each fuzz target for $(FUZZTIME); their seeds, some committed
## under testdata/fuzz, also run in every go test.
FUZZTIME     ?= 10s
FUZZ_TARGETS := FuzzLock FuzzForeignHolder
.PHONY: fuzz-short
fuzz-short: etcd
	@for f in $(FUZZ_TARGETS); do \
		echo "$(GO) test -run '^$$' -fuzz '^$$f$$' -fuzztime $(FUZZTIME) ."; \
		$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) . || exit 1; \
	done

## compat: the root package's tests against each etcd server version, with a
## pass/fail matrix: 3.4 ($(ETCD_34): Debian's etcd-server package, which
## `apt-get install etcd-server` provides), 3.5 and 3.6 (built from the
## nested modules tools/etcd-3.5 and tools/etcd-3.6) and the pinned 3.7. A
## server that is not there is reported as skipped. compat-3.4: 3.4 alone.
ETCD_34 ?= /usr/bin/etcd
.PHONY: compat compat-3.4
compat: etcd $(BIN)/etcd-3.5 $(BIN)/etcd-3.6
	.ci/compat 3.4=$(ETCD_34) 3.5=$(BIN)/etcd-3.5 3.6=$(BIN)/etcd-3.6 3.7=$(BIN)/etcd

compat-3.4: etcd
	.ci/compat 3.4=$(ETCD_34)

$(BIN)/etcd-%: tools/etcd-%/go.mod tools/etcd-%/go.sum
	cd tools/etcd-$* && $(GO) build -o $@ go.etcd.io/etcd/server/v3

## build: build the microlock command into ./bin (go build's cache makes a
## rebuild with nothing changed cheap, so it always runs).
## demo: build etcd and microlock, then watch the lock at work on a local etcd
## that the demo starts and removes (microlock finds bin/etcd beside itself).
.PHONY: build demo
build:
	$(GO) build -o $(BIN)/microlock ./cmd/microlock

demo: etcd build
	$(BIN)/microlock demo

## demo-election: the same for leader election: three candidates, the leader
## cut off, the next one taking over with a higher term.
.PHONY: demo-election
demo-election: etcd build
	$(BIN)/microlock demo --election

## bench: microlock beside etcd's concurrency.Mutex and raw etcd requests, each
## group against a fresh single-node etcd; prints one table of medians, ratios
## and targets and writes it to $(BENCH_OUT), the raw output beside it.
## BENCH_DATADIR=dir keeps etcd's data there, on disk with fsync, instead of on
## tmpfs. bench-short: the same in under 3 minutes (one repetition, shorter
## runs, 3,000 cycles on the hot key instead of 10,000, locks held for 10 s
## instead of 30 s).
BENCH_DIR         ?= $(BIN)/bench
BENCH_OUT         ?= $(BENCH_DIR)/table.md
BENCH_DATADIR     ?=
BENCH_FLAGS       ?= -benchtime 2s -count 6
BENCH_SHORT_FLAGS ?= -benchtime 300ms -count 1 -short
BENCH_GROUPS      := '^Benchmark(Floor|Uncontended|TryLockFail|SideBySide|Growth|Contention|Keys|Auth|Semaphore|ReadHeavy)$$'

# bench-run: the benchmarks with flags $(1), the held-locks ones (one run,
# each in a process of its own) with flags $(2), the metrics adapter's cost
# (contrib/prometheus, a nested module) with flags $(1), then the table.
define bench-run
	@mkdir -p $(BENCH_DIR)
	MICROLOCK_BENCH_DATADIR='$(BENCH_DATADIR)' $(GO) test -run '^$$' -bench $(BENCH_GROUPS) $(1) -timeout 60m ./internal/bench | tee $(BENCH_DIR)/raw.txt
	@grep -q '^ok' $(BENCH_DIR)/raw.txt
	MICROLOCK_BENCH_DATADIR='$(BENCH_DATADIR)' $(GO) test -run '^$$' -bench '^BenchmarkHeld$$' -benchtime 1x -count 1 $(2) -timeout 60m ./internal/bench | tee $(BENCH_DIR)/held.txt
	@grep -q '^ok' $(BENCH_DIR)/held.txt
	cd contrib/prometheus && $(GO) test -run '^$$' -bench '^BenchmarkEvents$$' $(1) -timeout 30m . | tee $(BENCH_DIR)/events.txt
	@grep -q '^ok' $(BENCH_DIR)/events.txt
	$(GO) run ./internal/bench/cmd/benchtable -o $(BENCH_OUT) $(BENCH_DIR)/raw.txt $(BENCH_DIR)/held.txt $(BENCH_DIR)/events.txt
endef

.PHONY: bench bench-short bench-profile
bench: etcd
	$(call bench-run,$(BENCH_FLAGS),)

bench-short: etcd
	$(call bench-run,$(BENCH_SHORT_FLAGS),-short)

## bench-profile: client CPU profiles of microlock's uncontended cycles and of
## its contention at C=8, and heap profiles of 10,000 held locks (both
## libraries), with microlock's top entries; the profiles stay in
## $(BENCH_DIR) for `go tool pprof`.
bench-profile: etcd
	@mkdir -p $(BENCH_DIR)
	$(GO) test -run '^$$' -bench '^BenchmarkUncontended$$/^microlock$$' -benchtime 3s -o $(BENCH_DIR)/bench.test -cpuprofile $(BENCH_DIR)/uncontended.pprof ./internal/bench
	$(GO) tool pprof -top -nodecount 25 $(BENCH_DIR)/bench.test $(BENCH_DIR)/uncontended.pprof
	$(GO) test -run '^$$' -bench '^BenchmarkContention$$/^C=8$$/^microlock$$' -benchtime 3s -o $(BENCH_DIR)/bench.test -cpuprofile $(BENCH_DIR)/contention.pprof ./internal/bench
	$(GO) tool pprof -top -nodecount 25 $(BENCH_DIR)/bench.test $(BENCH_DIR)/contention.pprof
	MICROLOCK_BENCH_PROFILE_DIR=$(BENCH_DIR) $(GO) test -run '^$$' -bench '^BenchmarkHeld$$/^N=10000$$' -benchtime 1x -short -o $(BENCH_DIR)/bench.test ./internal/bench
	$(GO) tool pprof -top -nodecount 25 -sample_index inuse_space $(BENCH_DIR)/bench.test $(BENCH_DIR)/held-microlock-10000.pprof

clean:
	rm -rf $(BIN)
