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
# The version: the image's tag and what `cni-userstack --version` says.
VERSION   ?= $(shell sed -n 's/^var Version = "\(.*\)"$$/\1/p' cmd/cni-userstack/main.go)
# The image tarball of `make image` (ctr/podman/kind load it).
IMAGE_TAR ?= bin/cni-userstack-image.tar

.PHONY: all build demo test unit vet fmt-check bench bench-deps deps clean image e2e-k8s e2e-k8s-deps

all: build

build:
	$(GO) build -o $(BIN) ./cmd/cni-userstack

# image builds the container image offline (hack/mkimage): static
# cni-userstack, host-local, loopback and portmap (the plugins at the
# version in go.mod) in one layer, no base image, no registry; tag
# localhost/cni-userstack:$(VERSION); stamped with the last commit's time.
image:
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) $(GO) run ./hack/mkimage -version $(VERSION) -out $(IMAGE_TAR)

# Debian packages only `make e2e-k8s` needs: etcd and containerd (with
# runc and ctr) for the cluster it builds, iptables for kube-proxy,
# nsenter (util-linux) to run the node's components in its namespace.
K8S_APT_PKGS := etcd-server containerd runc iptables iproute2 util-linux
K8S_APT_CMDS := etcd containerd runc ctr iptables ip nsenter
# Where the Kubernetes binaries e2e-k8s builds are kept (per release, in
# K8S_CACHE/v1.X.Y/bin): the first run builds them (~6 min on an idle
# 2-core machine, ~3 GB of Go build cache), later runs reuse them.
K8S_CACHE ?= $(HOME)/.cache/cni-userstack/kubernetes

e2e-k8s-deps:
	@missing=""; for c in $(K8S_APT_CMDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for e2e-k8s (missing:$$missing)"; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to apt-get install $(K8S_APT_PKGS)" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(K8S_APT_PKGS) >/dev/null; \
	fi

# e2e-k8s installs cni-userstack with `kubectl apply -f manifests/` on a
# real single-node Kubernetes built here (plus a simulated second node)
# and checks it end to end (test/e2e-k8s), printing each step with its
# time; everything it starts is private and torn down, also on failure.
# Not part of `make test`.
# Extra flags, e.g. E2E_K8S_FLAGS="-keep-work" (keep the logs) or "-mode route".
E2E_K8S_FLAGS ?=

e2e-k8s: deps e2e-k8s-deps image
	$(GO) run ./test/e2e-k8s -k8s-cache $(K8S_CACHE) -image $(IMAGE_TAR) -version $(VERSION) $(E2E_K8S_FLAGS)

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
# rounds, over IPv4 and, all but the gVisor relay, over IPv6 too;
# memory per idle relayed connection; CNI ADD/DEL latency), which
# prints its report and writes bench-report/bench.md.
bench: deps bench-deps
	$(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 30m $(PKGS)
	$(GO) run ./test/bench -duration $(BENCH_DURATION) -rounds $(BENCH_ROUNDS) -out bench-report/bench.md $(BENCH_FLAGS)

clean:
	rm -rf bin demo-report bench-report
