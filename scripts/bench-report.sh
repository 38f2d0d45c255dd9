#!/usr/bin/env bash
# Reads `go test -bench` output on stdin, prints ops/s per benchmark (mean
# over -count runs) and the ratios the issues set as goals. Exit 1 if a goal
# is missed, so `make bench` fails loudly rather than printing a bad number.
#
# Each goal: "LABEL|BENCH|BASELINE|MIN": ratio = ops/s(BENCH) / ops/s(BASELINE)
# must be >= MIN; with an empty BASELINE, ops/s(BENCH) itself must be >= MIN.
set -euo pipefail
GOALS=(
	"StudioML open vs raw RSA-OAEP decrypt|OpenStudioML|RawRSADecryptOAEP|0.95"
	"HPKE (ML-KEM-768+X25519) open vs StudioML open|OpenHPKE|OpenStudioML|50"
	"HPKE (X25519) open vs StudioML open|OpenHPKEX25519|OpenStudioML|50"
	"overlay Get vs plain etcd driver Get|Etcd/Get/overlay|Etcd/Get/plain|0.8"
	"overlay Put vs plain etcd driver Put|Etcd/Put/overlay|Etcd/Put/plain|0.8"
	"proxy GET, client cache (ops/s)|ProxyGetCached||20000"
	"proxy GET uncached vs raw etcd Get|ProxyGetUncached|RawEtcdGet|0.8"
	"overlay Get, Transit KEK vs file key|OverlayGet/Get/transit-kek|OverlayGet/Get/file-key|0.9"
	"runner StudioML e2e vs 2 cores x raw RSA decrypt|EndToEndStudioML|RawRSADecryptOAEP|1.7"
	"runner HPKE e2e (msg/s)|EndToEndHPKE||5000"
	"migrate N secrets vs raw puts|Migrate|RawPut|0.8"
)
awk -v goals="$(printf '%s\n' "${GOALS[@]}")" '
/^Benchmark/ && / ns\/op/ {
	name = $1; sub(/^Benchmark/, "", name); sub(/-[0-9]+$/, "", name)
	for (i = 2; i <= NF; i++) if ($(i) == "ns/op") { sum[name] += $(i-1); n[name]++ }
	if (!(name in order)) { order[name] = ++count; names[count] = name }
}
END {
	printf "%-36s %14s %12s %5s\n", "benchmark", "ns/op", "ops/s", "runs"
	for (i = 1; i <= count; i++) {
		b = names[i]; ns[b] = sum[b] / n[b]
		printf "%-36s %14.0f %12.1f %5d\n", b, ns[b], 1e9 / ns[b], n[b]
	}
	print ""
	fail = 0
	ng = split(goals, g, "\n")
	for (i = 1; i <= ng; i++) {
		if (g[i] == "") continue
		split(g[i], f, "|")
		if (!(f[2] in ns) || (f[3] != "" && !(f[3] in ns))) { printf "%-50s missing benchmark\n", f[1]; fail = 1; continue }
		r = (f[3] == "") ? 1e9 / ns[f[2]] : ns[f[3]] / ns[f[2]]
		ok = (r >= f[4]) ? "ok" : "MISSED"
		if (ok != "ok") fail = 1
		printf "%-50s %14.2f  goal >= %-5s %s\n", f[1], r, f[4], ok
	}
	exit fail
}'
