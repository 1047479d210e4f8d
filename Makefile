# cni-userstack — the two commands a new user runs are `make demo` and
# `make test`. Both install what they need (Debian packages via apt-get,
# Go modules via the module proxy) and must run as root: they create
# network namespaces and veth pairs.

GO        ?= go
BIN       := bin/cni-userstack
PKGS      := ./...
# Debian packages the demo and the end-to-end tests drive as real peers.
APT_PKGS  := iproute2 iputils-ping tcpdump iperf3 procps iptables
# Commands that prove each package above is present.
APT_CMDS  := ip ping tcpdump iperf3 pkill iptables
TEST_TIMEOUT ?= 14m

.PHONY: all build demo test unit vet fmt-check bench bench-deps deps clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/cni-userstack

# deps installs the Debian packages once (apt-get only when a command is missing).
deps:
	@missing=""; for c in $(APT_CMDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages (missing:$$missing)"; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install $(APT_PKGS)" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PKGS) >/dev/null; \
	fi
	$(GO) mod download

demo: deps build
	$(GO) run ./test/e2e/demo -bin $(BIN)

vet:
	$(GO) vet $(PKGS)

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# test runs every package's tests, the fuzz seed corpora and the
# end-to-end tests against the kernel (root).
# The packages run under the race detector; then, without it, the issue
# sizes: 256 MiB per simulated TCP transfer under loss, reordering,
# duplication and corruption, and 1 GiB each way against the kernel.
test: deps fmt-check vet
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v /test/)
	TCP_TRANSFER_MB=256 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run TestTransferUnderFaults ./netstack/tcp
	TCP_E2E_MB=1024 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./test/...

# Debian packages only `make bench` needs: the variants it runs beside
# ours (pasta from passt, slirp4netns), iperf3 and nsenter (util-linux).
BENCH_APT_PKGS := passt slirp4netns iperf3 util-linux
BENCH_APT_CMDS := pasta slirp4netns iperf3 nsenter
# Length of each iperf3, latency and connect-rate run; interleaved rounds
# (the report gives median, min and max over them); extra flags for
# ./test/bench (e.g. BENCH_FLAGS=-variants=ptp,proxy,gvisor -mem-conns=0).
BENCH_DURATION ?= 5s
BENCH_ROUNDS ?= 3
BENCH_FLAGS ?=

# bench-deps installs the Debian packages above and fetches gVisor for the
# benchmark-only relay in test/bench/gvisorrelay (its own module: the
# product's go.mod does not change for it).
bench-deps:
	@missing=""; for c in $(BENCH_APT_CMDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the benchmark (missing:$$missing)"; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install $(BENCH_APT_PKGS)" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(BENCH_APT_PKGS) >/dev/null; \
	fi
	cd test/bench/gvisorrelay && GOFLAGS=-mod=mod $(GO) mod download

# bench runs the Go benchmarks with allocation counts, then the
# side-by-side harness (./test/bench: kernel ptp, the floor relays, our
# route and proxy modes, the gVisor relay, pasta at MTU 1500 and 65520,
# slirp4netns; throughput, latency, connections/s, CPU/GB in interleaved
# rounds; memory per idle relayed connection; CNI ADD/DEL latency), which
# prints its report and writes bench-report/bench.md.
bench: deps bench-deps
	$(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 30m $(PKGS)
	$(GO) run ./test/bench -duration $(BENCH_DURATION) -rounds $(BENCH_ROUNDS) -out bench-report/bench.md $(BENCH_FLAGS)

clean:
	rm -rf bin demo-report bench-report
