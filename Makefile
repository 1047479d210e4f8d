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

.PHONY: all build demo test unit vet fmt-check bench deps clean

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
test: deps fmt-check vet
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)

# bench runs the Go benchmarks with allocation counts.
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 30m $(PKGS)

clean:
	rm -rf bin demo-report bench-report
