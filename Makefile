# microlock's build. Tools are pinned here and installed into ./bin; the etcd
# server and etcdctl are built from the versions pinned in tools/go.mod.

GO          ?= go
BIN         := $(CURDIR)/bin
export GOBIN := $(BIN)

STATICCHECK_VERSION := v0.8.2
GOLANGCI_VERSION    := v2.15.0
BENCHSTAT_VERSION   := v0.0.0-20260908200009-22c9c6c9d4da

GOTESTFLAGS ?= -race -shuffle=on -count=1 -timeout 20m

.PHONY: test check fmt-check vet tidy-check lint etcd etcdctl clean

## test: the full check that CI runs: formatting, vet, tidy, and every test
## with the race detector, shuffled, against real etcd servers.
test: check etcd
	$(GO) test $(GOTESTFLAGS) ./...

## check: the fast static checks.
check: fmt-check vet tidy-check

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

tidy-check:
	$(GO) mod tidy -diff
	cd tools && $(GO) mod tidy -diff

## lint: staticcheck, pinned.
lint: $(BIN)/staticcheck
	$(BIN)/staticcheck ./...

$(BIN)/staticcheck:
	$(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

$(BIN)/benchstat:
	$(GO) install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION)

## etcd: build the pinned etcd server into ./bin.
etcd: $(BIN)/etcd
$(BIN)/etcd: tools/go.mod tools/go.sum
	cd tools && $(GO) build -o $(BIN)/etcd go.etcd.io/etcd/server/v3

## etcdctl: build the pinned etcdctl into ./bin.
etcdctl: $(BIN)/etcdctl
$(BIN)/etcdctl: tools/go.mod tools/go.sum
	cd tools && $(GO) build -o $(BIN)/etcdctl go.etcd.io/etcd/etcdctl/v3

clean:
	rm -rf $(BIN)
