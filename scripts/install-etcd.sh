#!/usr/bin/env bash
# Builds a real etcd server binary from the Go module proxy, at the version
# of go.etcd.io/etcd/server/v3 in this repository's go.mod (the one embedded
# etcd links), and caches it outside the work tree. Prints the binary's path.
# Cluster tests run it as separate processes so that SIGKILL is real.
# Debian's etcd-server (3.4) is too old to share data or flags with 3.6.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${ETCD_VERSION:-$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$ROOT/go.mod")}
if [[ -z "$VERSION" ]]; then
	echo "install-etcd: go.etcd.io/etcd/server/v3 not found in $ROOT/go.mod; set ETCD_VERSION" >&2
	exit 1
fi
CACHE=${SEALRUN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sealrun}
DIR="$CACHE/etcd-$VERSION"
BIN="$DIR/etcd"

ok() { [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "etcd Version: ${VERSION#v}$"; }
if ok; then
	echo "$BIN"
	exit 0
fi

mkdir -p "$DIR"
# Test packages run in parallel and may all find the binary missing: one
# builds, the others wait for it.
exec 9>"$DIR/.lock"
flock 9
if ok; then
	echo "$BIN"
	exit 0
fi
cd "$DIR"
printf 'module etcdbin\n\ngo 1.26\n' >go.mod
printf '//go:build tools\npackage tools\nimport _ "go.etcd.io/etcd/server/v3"\n' >tools.go
export GOFLAGS=-mod=mod
echo "install-etcd: building etcd $VERSION (2-3 minutes on 2 cores)..." >&2
go get "go.etcd.io/etcd/server/v3@$VERSION" >&2
go build -o "$BIN.tmp" go.etcd.io/etcd/server/v3 >&2
mv "$BIN.tmp" "$BIN"
"$BIN" --version >&2
echo "$BIN"
