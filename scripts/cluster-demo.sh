#!/usr/bin/env bash
# make cluster-demo: the clustered system on this machine, on loopback and
# unix sockets — a 3-member etcd, RabbitMQ, a 3-node Vault on raft, two
# secrets proxies and three runner processes, each with its own config, log
# and state — started by the project's own test helpers (internal/testenv).
# It sends work, kills the etcd leader, a RabbitMQ node, the active Vault
# node and a proxy, prints per step what happened, shows every job answered
# once and stops everything (also on ^C or an error).
#
# It is TestClusterChaos (test/chaos) in demo mode: SEALRUN_CLUSTER_DEMO=1,
# 40 messages (SEALRUN_CLUSTER_CHAOS_N to change), narration on stdout.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-go}
W=$(mktemp -d /tmp/sealrun-cluster-demo.XXXXXX)
PID=
KEEP=

cleanup() {
	set +e
	if [[ -n "$PID" ]] && kill -0 "$PID" 2>/dev/null; then
		# The test binary stops RabbitMQ on SIGTERM; every other process it
		# started dies with it (parent-death signal).
		kill -TERM "$PID"
		wait "$PID"
	fi
	if [[ -n "$KEEP" ]]; then
		echo "cluster-demo: logs and data kept in $W"
	else
		rm -rf "$W"
	fi
	echo "cluster-demo: stopped everything it started"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== build (sealrun and the demo) and dependencies"
make -s -C "$ROOT" build
(cd "$ROOT" && "$GO" test -c -tags chaos -o "$W/chaos.test" ./test/chaos)

echo "== the clustered system, under faults"
# Scratch files (logs, data, sockets) go under $W, kept if it fails.
cd "$ROOT/test/chaos"
TMPDIR=$W SEALRUN_BIN="$ROOT/bin/sealrun" SEALRUN_CLUSTER_DEMO=1 \
	"$W/chaos.test" -test.run '^TestClusterChaos$' -test.count=1 -test.timeout=20m &
PID=$!
set +e
wait "$PID"
rc=$?
set -e
PID=
if [[ $rc -ne 0 ]]; then
	KEEP=1
	echo "cluster-demo: FAILED (exit $rc); the test's log is above" >&2
	exit "$rc"
fi
echo "== cluster-demo: done"
