# sealrun — build, test, fuzz and benchmark.
# `make test` is the command CI runs (see README.md and .ci/run).

GO       ?= go
BIN      := bin/sealrun
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
FUZZTIME ?= 20s
CHAOS_N  ?= 10000

.PHONY: all build test deps vet fmt-check fuzz bench chaos cluster-chaos demo cluster-demo drill clean

all: build

build:
	$(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/sealrun

# deps installs what the tests need on a fresh Debian machine (idempotent):
# Debian packages, and a real Vault server built from the Go module proxy and
# cached outside the work tree (~10 minutes the first time, instant after), and
# an etcd server binary of go.mod's etcd version for the cluster tests (~3 min).
deps:
	bash scripts/install-deps.sh
	bash scripts/install-vault.sh >/dev/null
	bash scripts/install-etcd.sh >/dev/null

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

# deploy/ is its own module (the Kubernetes and kustomize modules stay out
# of sealrun's go.mod): ./... does not reach it, so it is named here.
vet:
	$(GO) vet ./...
	cd deploy && $(GO) vet ./...
	$(GO) vet -tags chaos ./test/chaos

# The whole suite: race detector on, fuzz seed corpora included, the Python
# StudioML interop test included; then the short chaos runs: CHAOS_SHORT_N
# messages with every fault of `make chaos` (RabbitMQ SIGKILLed 3 times,
# etcd and the proxy restarted once), and CLUSTER_CHAOS_SHORT_N with every
# fault of `make cluster-chaos` plus the runner-kill takeover (~2 minutes).
CHAOS_SHORT_N ?= 300
CLUSTER_CHAOS_SHORT_N ?= 300
test: deps fmt-check vet build
	$(GO) test -race -count=1 -timeout 15m ./...
	cd deploy && $(GO) test -race -count=1 -timeout 5m ./...
	SEALRUN_BIN=$(CURDIR)/$(BIN) SEALRUN_CHAOS_N=$(CHAOS_SHORT_N) SEALRUN_CLUSTER_CHAOS_N=$(CLUSTER_CHAOS_SHORT_N) \
		$(GO) test -tags chaos -count=1 -timeout 15m ./test/chaos

# Each fuzz target for FUZZTIME (go test allows one -fuzz target per run).
FUZZ_TARGETS := \
	./backup:FuzzParseShares \
	./backup:FuzzDecodeStore \
	./envelope:FuzzOpen \
	./envelope:FuzzOpenPayload \
	./envelope:FuzzParseKeys \
	./envelope:FuzzDecodeSignature \
	./proxy:FuzzCleanSecretPath \
	./proxy:FuzzDecodeConfig \
	./proxy:FuzzValidID \
	./proxy/audit:FuzzVerify \
	./proxy/audit:FuzzAppendEntry \
	./storage/overlay:FuzzOpen \
	./storage/config:FuzzDecode \
	./runner:FuzzDecodeConfig \
	./runner:FuzzReports \
	./migrate:FuzzParseK8sSecrets \
	./migrate:FuzzParseMapping \
	./migrate:FuzzParseSpec \
	./migrate:FuzzParseContainers \
	./migrate:FuzzCustodiaStoreConfig

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "== fuzz $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# One run of every benchmark -> bench/REPORT.md (ratios against baselines and
# the issues' goals, runner scaling, proxy RSS); fails if a goal is missed.
bench:
	$(GO) run ./bench

# Chaos: 2 runner processes, the proxy and etcd as separate processes;
# RabbitMQ SIGKILLed 3 times, etcd once, the proxy restarted once (~4 minutes
# for 10k messages).
chaos: build
	SEALRUN_BIN=$(CURDIR)/$(BIN) SEALRUN_CHAOS_N=$(CHAOS_N) $(GO) test -tags chaos -count=1 -v -timeout 30m -run '^TestChaos$$' ./test/chaos

# Cluster chaos: a 3-member etcd, RabbitMQ, a 3-node Vault (raft), 2 proxies
# and 3 runner processes under load; SIGKILLs the etcd leader, a RabbitMQ
# node, the active Vault node, a proxy and a runner, and counts (0 lost,
# 0 answered twice, poison dead-lettered, secret reads failed only while a
# proxy was down). Then a runner SIGKILLed mid-job: the takeover delay
# against claim_lease. CLUSTER_CHAOS_N good messages (~2 minutes for 2000).
CLUSTER_CHAOS_N ?= 2000
cluster-chaos: build
	SEALRUN_BIN=$(CURDIR)/$(BIN) SEALRUN_CLUSTER_CHAOS_N=$(CLUSTER_CHAOS_N) $(GO) test -tags chaos -count=1 -v -timeout 30m \
		-run '^(TestClusterChaos|TestRunnerKillTakeover)$$' ./test/chaos

# The whole system on one machine: RabbitMQ, proxy, runner, three messages.
demo:
	bash scripts/demo.sh

# The clustered system on one machine (etcd, RabbitMQ, Vault HA, 2 proxies,
# 3 runners): sends work, kills the etcd leader, a RabbitMQ node, the active
# Vault node and a proxy, prints each step, shows every job answered once.
cluster-demo: build
	bash scripts/cluster-demo.sh

# The disaster-recovery drill (also part of make test): populate a store,
# split the master keys 3-of-5, back up the store, destroy keys and etcd,
# restore from typed shares into a new etcd, read every secret back and
# answer a queued message. Prints each step and its time.
drill:
	$(GO) test -count=1 -v -run 'Drill' ./test/drill ./cmd/sealrun

clean:
	rm -rf bin
