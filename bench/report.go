// Command report runs sealrun's benchmarks once on this machine and writes
// bench/REPORT.md: every benchmark's numbers, each comparison as a ratio to
// its baseline next to the goal the issues set, the runner's scaling with
// concurrency and prefetch, and the secrets proxy's memory idle and under
// load. Numbers are regenerated on every run, never typed.
//
//	go run ./bench                 # what `make bench` runs
//	go run ./bench -no-scaling -runner-n 1000
//
// It exits 1 when a goal is missed (after writing the report), unless
// -strict=false.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// goal is one comparison: ratio = ops/s(bench) / ops/s(base) (or ops/s of
// bench alone when base is empty) must be ≥ min; min 0 means report only.
// A goal with calc computes measured and baseline itself (a cost in µs, or
// a baseline from a benchmark's own metrics), and then max > 0 bounds the
// ratio from above instead.
type goal struct {
	label, bench, base string
	min                float64
	calc               func(res map[string]*result) (measured, baseline float64, ok bool)
	max                float64
	unit               string // of measured and baseline when calc is set, e.g. "µs/msg"
}

// metricOf returns a benchmark's custom metric.
func metricOf(res map[string]*result, bench, unit string) (float64, bool) {
	r := res[bench]
	if r == nil {
		return 0, false
	}
	v, ok := r.metrics[unit]
	return v, ok
}

// cpuRatio compares two benchmarks' CPU per operation.
func cpuRatio(bench, base string) func(map[string]*result) (float64, float64, bool) {
	return func(res map[string]*result) (float64, float64, bool) {
		a, ok1 := metricOf(res, bench, "cpu-µs/op")
		b, ok2 := metricOf(res, base, "cpu-µs/op")
		return a, b, ok1 && ok2 && b > 0
	}
}

// runnerFloor is the runner process's CPU per HPKE message against what
// it cannot avoid, each measured alone in this run: one envelope open
// (OpenHPKEX25519), one response seal per report it sends (SealResponse ×
// responses/msg: Started, log and final), and the AMQP client work of a
// plain consumer in the raw round trip (receive, publish a reply with
// confirms, ack).
func runnerFloor(res map[string]*result) (float64, float64, bool) {
	run, ok1 := metricOf(res, "RunnerProcess", "runner-cpu-us/msg")
	reports, ok2 := metricOf(res, "RunnerProcess", "responses/msg")
	amqp, ok3 := metricOf(res, "RawAMQPRoundTrip", "consumer-cpu-us/msg")
	open, seal := res["OpenHPKEX25519"], res["SealResponse"]
	if !ok1 || !ok2 || !ok3 || open == nil || seal == nil {
		return 0, 0, false
	}
	return run, open.nsop/1e3 + reports*seal.nsop/1e3 + amqp, true
}

// studioMLCores is the runner's StudioML rate against the rate RSA-4096
// decrypts alone reach on all the cores the runner has (GOMAXPROCS of the
// benchmark process), measured by the same benchmark just before its run.
func studioMLCores(res map[string]*result) (float64, float64, bool) {
	all, ok := metricOf(res, "EndToEndStudioML", "rsa4096-decrypts/s/all-cores")
	if !ok || all == 0 {
		return 0, 0, false
	}
	return opsPerSec(res["EndToEndStudioML"]), all, true
}

var goals = []goal{
	{label: "StudioML open vs raw RSA-4096 OAEP decrypt", bench: "OpenStudioML", base: "RawRSADecryptOAEP", min: 0.95},
	{label: "HPKE (ML-KEM-768+X25519) open vs StudioML open", bench: "OpenHPKE", base: "OpenStudioML", min: 50},
	{label: "HPKE (X25519) open vs StudioML open", bench: "OpenHPKEX25519", base: "OpenStudioML", min: 50},
	{label: "overlay Get vs plain etcd driver Get", bench: "Etcd/Get/overlay", base: "Etcd/Get/plain", min: 0.8},
	{label: "overlay Put vs plain etcd driver Put", bench: "Etcd/Put/overlay", base: "Etcd/Put/plain", min: 0.8},
	{label: "proxy GET with client cache (ops/s)", bench: "ProxyGetCached", min: 20000},
	{label: "proxy GET uncached, audit.sync write, vs raw etcd Get", bench: "ProxyGetUncachedAuditWrite", base: "RawEtcdGet", min: 0.8},
	{label: "proxy GET uncached, audit.sync fsync, vs the audit log alone (fsync'd, group commit, same concurrency)", bench: "ProxyGetUncached", base: "AuditOnly", min: 0.8},
	{label: "proxy CPU per uncached GET (audit.sync write) vs raw etcd Get's", calc: cpuRatio("ProxyGetUncachedAuditWrite", "RawEtcdGet"), max: 1.5, unit: "cpu-µs/op"},
	{label: "proxy CPU per uncached GET (audit.sync fsync) vs raw etcd Get's", calc: cpuRatio("ProxyGetUncached", "RawEtcdGet"), max: 1.5, unit: "cpu-µs/op"},
	{label: "proxy GET uncached, audit.sync fsync, vs raw etcd Get", bench: "ProxyGetUncached", base: "RawEtcdGet"},
	{label: "proxy GET, server value cache off, vs raw etcd Get", bench: "ProxyGetBackend", base: "RawEtcdGet"},
	{label: "audit log alone (fsync'd, group commit, same concurrency) vs raw etcd Get", bench: "AuditOnly", base: "RawEtcdGet"},
	{label: "proxy GET uncached, audit log on tmpfs (diagnostic, not durable) vs raw etcd Get", bench: "ProxyGetUncachedAuditTmpfs", base: "RawEtcdGet"},
	{label: "Vault KV v2 Get through the proxy vs direct (vault/api)", bench: "ProxyGetVault", base: "VaultKVGetDirect"},
	{label: "overlay Get, Transit KEK vs file key", bench: "OverlayGet/Get/transit-kek", base: "OverlayGet/Get/file-key", min: 0.9},
	{label: "runner HPKE (X25519) e2e vs raw AMQP request→response round trip", bench: "EndToEndHPKE", base: "RawAMQPRoundTrip", min: 0.6},
	{label: "runner as its own process (HPKE) vs raw AMQP round trip", bench: "RunnerProcess", base: "RawAMQPRoundTrip"},
	{label: "runner process CPU per HPKE message vs its floor (open + report seals + raw round trip's consumer work)", calc: runnerFloor, max: 1.5, unit: "cpu-µs/msg"},
	{label: "runner StudioML e2e vs RSA-4096 decrypts alone on the runner's cores (measured side by side)", calc: studioMLCores, min: 0.85, unit: "ops/s"},
	{label: "runner HPKE (X25519) e2e, response consumed (msg/s)", bench: "EndToEndHPKE"},
	{label: "runner HPKE (ML-KEM-768+X25519) e2e (msg/s)", bench: "EndToEndHPKEHybrid"},
	{label: "runner HPKE e2e, 2 runners vs 1", bench: "EndToEndHPKETwoRunners", base: "EndToEndHPKE"},
	{label: "runner HPKE e2e, JobRecord writes unbatched vs batched", bench: "EndToEndHPKEUnbatched", base: "EndToEndHPKE"},
	{label: "runner HPKE e2e, JobRecords in etcd vs in memory", bench: "EndToEndHPKE", base: "EndToEndHPKEMemoryState"},
	{label: "raw AMQP round trip vs raw AMQP publish→consume (what the reply costs)", bench: "RawAMQPRoundTrip", base: "RawAMQP"},
	{label: "migrate N secrets vs raw puts", bench: "Migrate", base: "RawPut", min: 0.8},
	{label: "migrate N secrets vs raw puts in 64-put transactions", bench: "Migrate", base: "RawPutBatch"},
	{label: "rotate master key over 100k records, 4 readers running (records/s)", bench: "Rotate100k"},
}

// result is one benchmark line (averaged over repeats).
type result struct {
	pkg, name string
	nsop      float64
	n         int
	metrics   map[string]float64
}

func main() {
	out := flag.String("out", "bench/REPORT.md", "report to write")
	raw := flag.String("raw", "bench/bench.txt", "raw go test output to keep")
	benchtime := flag.String("benchtime", "2s", "-benchtime for the micro-benchmarks")
	runnerN := flag.Int("runner-n", 3000, "messages per runner end-to-end benchmark")
	scalingN := flag.Int("scaling-n", 1000, "messages per scaling configuration")
	studioN := flag.Int("studioml-n", 600, "messages for the StudioML (RSA-4096) end-to-end benchmark, ~10× slower per message than HPKE")
	noScaling := flag.Bool("no-scaling", false, "skip the concurrency × prefetch scaling runs")
	noRSS := flag.Bool("no-rss", false, "skip the proxy memory measurement")
	strict := flag.Bool("strict", true, "exit 1 when a goal is missed")
	only := flag.String("only", "", "run only the packages whose path contains this (for trying the report out)")
	flag.Parse()

	// Paths below are relative to the module root.
	if root, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output(); err == nil {
		if err := os.Chdir(strings.TrimSpace(string(root))); err != nil {
			fatal(err)
		}
	}
	start := time.Now()
	var rawOut bytes.Buffer
	var failed []string
	profDir, err := os.MkdirTemp("", "sealrun-bench-prof-")
	if err != nil {
		fatal(err)
	}
	defer os.RemoveAll(profDir)
	// Each benchmark runs alone in its package's test binary with
	// -test.cpuprofile, so its profile holds its own costs only.
	type pkgRun struct {
		pkg, filter string
		benchtime   func(name string) string
	}
	micro := func(string) string { return *benchtime }
	pkgs := []pkgRun{
		{"./envelope", ".", micro}, {"./storage/overlay", ".", micro}, {"./storage/kek", ".", micro},
		{"./proxy", ".", micro}, {"./migrate", ".", micro},
		{"./runner", "EndToEnd|RawAMQP|RunnerProcess" + map[bool]string{false: "|Scaling", true: ""}[*noScaling], func(name string) string {
			switch name {
			case "Scaling":
				return fmt.Sprintf("%dx", *scalingN)
			case "EndToEndStudioML":
				return fmt.Sprintf("%dx", *studioN)
			}
			return fmt.Sprintf("%dx", *runnerN)
		}},
	}
	var profiles []profile
	for _, pr := range pkgs {
		if !strings.Contains(pr.pkg, *only) {
			continue
		}
		bin := filepath.Join(profDir, strings.ReplaceAll(strings.TrimPrefix(pr.pkg, "./"), "/", "_")+".test")
		fmt.Fprintf(os.Stderr, "== go test -c %s\n", pr.pkg)
		if out, err := exec.Command("go", "test", "-c", "-o", bin, pr.pkg).CombinedOutput(); err != nil {
			failed = append(failed, fmt.Sprintf("`go test -c %s`: %v: %s", pr.pkg, err, out))
			continue
		}
		list, err := exec.Command(bin, "-test.list", "^Benchmark("+pr.filter+")").Output()
		if err != nil {
			failed = append(failed, fmt.Sprintf("`%s -test.list`: %v", pr.pkg, err))
			continue
		}
		fmt.Fprintf(&rawOut, "pkg: github.com/sealrun/sealrun/%s\n", strings.TrimPrefix(pr.pkg, "./"))
		for _, name := range strings.Fields(string(list)) {
			if !strings.HasPrefix(name, "Benchmark") {
				continue
			}
			short := strings.TrimPrefix(name, "Benchmark")
			prof := filepath.Join(profDir, short+".prof")
			args := []string{"-test.run", "^$", "-test.bench", "^" + name + "$", "-test.benchtime", pr.benchtime(short), "-test.count", "1", "-test.cpuprofile", prof}
			fmt.Fprintf(os.Stderr, "== %s %s\n", pr.pkg, strings.Join(args, " "))
			cmd := exec.Command(bin, args...)
			cmd.Dir = pr.pkg // as go test runs a package's tests
			cmd.Stdout = io.MultiWriter(&rawOut, os.Stderr)
			cmd.Stderr = io.MultiWriter(&rawOut, os.Stderr)
			if err := cmd.Run(); err != nil {
				failed = append(failed, fmt.Sprintf("`go test -run '^$' -bench '^%s$' %s`: %v", name, pr.pkg, err))
				fmt.Fprintf(os.Stderr, "bench: %s %s failed: %v\n", pr.pkg, name, err)
				continue
			}
			if top, err := topFunctions(bin, prof); err == nil {
				profiles = append(profiles, profile{pkg: strings.TrimPrefix(pr.pkg, "./"), bench: short, top: top})
			} else {
				fmt.Fprintf(os.Stderr, "bench: profile of %s: %v\n", name, err)
			}
		}
	}
	results, order := parse(rawOut.String())

	var rss *rssResult
	if !*noRSS {
		var err error
		if rss, err = proxyRSS(); err != nil {
			failed = append(failed, "proxy memory: "+err.Error())
			fmt.Fprintln(os.Stderr, "bench: proxy memory:", err)
		}
	}

	var md strings.Builder
	missed := writeReport(&md, results, order, rss, profiles, failed, time.Since(start))
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		fatal(err)
	}
	if err := os.WriteFile(*out, []byte(md.String()), 0o644); err != nil {
		fatal(err)
	}
	if *raw != "" {
		if err := os.WriteFile(*raw, rawOut.Bytes(), 0o644); err != nil {
			fatal(err)
		}
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s (%d benchmarks, %d goals missed, %d runs failed)\n", *out, len(results), missed, len(failed))
	if *strict && (missed > 0 || len(failed) > 0) {
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

// parse reads `go test -bench` output.
func parse(s string) (map[string]*result, []string) {
	res := map[string]*result{}
	var order []string
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(strings.TrimSpace(p), "github.com/sealrun/sealrun/")
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := strings.TrimPrefix(f[0], "Benchmark")
		if i := strings.LastIndex(name, "-"); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		r := res[name]
		if r == nil {
			r = &result{pkg: pkg, name: name, metrics: map[string]float64{}}
			res[name] = r
			order = append(order, name)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			unit := f[i+1]
			if unit == "ns/op" {
				r.nsop = (r.nsop*float64(r.n) + v) / float64(r.n+1)
			} else {
				r.metrics[unit] = v // last repeat wins for custom metrics
			}
		}
		r.n++
	}
	return res, order
}

// opsPerSec is the benchmark's own rate when it reports one (the runner's
// msgs/s, timed from first publish to last finished job; migration's
// secrets/s), else 1/ns_per_op.
func opsPerSec(r *result) float64 {
	if r == nil {
		return 0
	}
	for _, u := range []string{"msgs/s", "secrets/s", "records/s"} {
		if v, ok := r.metrics[u]; ok && v > 0 {
			return v
		}
	}
	if r.nsop == 0 {
		return 0
	}
	return 1e9 / r.nsop
}

func human(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

func writeReport(w *strings.Builder, res map[string]*result, order []string, rss *rssResult, profiles []profile, failed []string, took time.Duration) int {
	rev, _ := exec.Command("git", "describe", "--tags", "--always", "--dirty").Output()
	fmt.Fprintf(w, "# sealrun benchmark report\n\n")
	fmt.Fprintf(w, "Generated by `make bench` (`go run ./bench`) — do not edit; numbers come from one run.\n\n")
	fmt.Fprintf(w, "- date: %s\n- revision: %s\n- machine: %s, %d cores (GOMAXPROCS %d), %s/%s, %s\n- run took: %s\n\n",
		time.Now().UTC().Format(time.RFC3339), strings.TrimSpace(string(rev)), cpuModel(), runtime.NumCPU(),
		runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version(), took.Round(time.Second))
	if len(failed) > 0 {
		fmt.Fprintf(w, "**Incomplete run** — these parts failed and their lines show as missing:\n\n")
		for _, f := range failed {
			fmt.Fprintf(w, "- %s\n", f)
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintf(w, "## Ratios against baselines and goals\n\n")
	fmt.Fprintf(w, "Ratio = ops/s of the measured path ÷ ops/s of its baseline (for a goal without a baseline: ops/s itself); for CPU rows, CPU per operation ÷ the baseline's (lower is better). Runner and migration rates are the benchmarks' own msgs/s and secrets/s. "+
		"The machine is shared with other work (other test suites ran during this run), so absolute rates are noisy; compare ratios, whose two sides ran minutes apart on the same machine.\n\n")
	fmt.Fprintf(w, "| comparison | measured ops/s | baseline ops/s | ratio | goal | status |\n|---|---:|---:|---:|---:|---|\n")
	missed := 0
	for _, g := range goals {
		if g.calc != nil {
			m, base, ok := g.calc(res)
			if !ok {
				fmt.Fprintf(w, "| %s | – | – | – | %s | missing benchmark |\n", g.label, goalText(g))
				if g.min > 0 || g.max > 0 {
					missed++
				}
				continue
			}
			ratio := m / base
			status := "ok"
			if (g.min > 0 && ratio < g.min) || (g.max > 0 && ratio > g.max) {
				status = "**MISSED**"
				missed++
			}
			fmt.Fprintf(w, "| %s | %s %s | %s %s | %s | %s | %s |\n", g.label, human(m), g.unit, human(base), g.unit, human(ratio), goalText(g), status)
			continue
		}
		b, base := res[g.bench], res[g.base]
		if b == nil || (g.base != "" && base == nil) {
			fmt.Fprintf(w, "| %s | – | – | – | %s | missing benchmark |\n", g.label, goalText(g))
			if g.min > 0 {
				missed++
			}
			continue
		}
		ratio, baseOps := opsPerSec(b), "–"
		if base != nil {
			ratio = opsPerSec(b) / opsPerSec(base)
			baseOps = human(opsPerSec(base))
		}
		status := "report only"
		if g.min > 0 {
			status = "ok"
			if ratio < g.min {
				status = "**MISSED**"
				missed++
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", g.label, human(opsPerSec(b)), baseOps, human(ratio), goalText(g), status)
	}
	fmt.Fprintln(w)

	// Scaling.
	var scale []string
	for _, n := range order {
		if strings.HasPrefix(n, "Scaling/") {
			scale = append(scale, n)
		}
	}
	if len(scale) > 0 {
		fmt.Fprintf(w, "## Runner scaling (HPKE, JobRecords in etcd, no-op executor, responses consumed)\n\n")
		fmt.Fprintf(w, "msgs/s by consumers (Runner instances on one queue, rows) and prefetch per consumer (columns; each consumer runs as many messages at once as its prefetch):\n\n")
		conc, pre := map[string]bool{}, map[string]bool{}
		val := map[[2]string]float64{}
		best, bestKey := 0.0, ""
		for _, n := range scale {
			parts := strings.Split(n, "/") // Scaling/c=1/p=10
			if len(parts) != 3 {
				continue
			}
			c, p := strings.TrimPrefix(parts[1], "c="), strings.TrimPrefix(parts[2], "p=")
			conc[c], pre[p] = true, true
			v := opsPerSec(res[n])
			val[[2]string{c, p}] = v
			if v > best {
				best, bestKey = v, "consumers "+c+", prefetch "+p
			}
		}
		cs, ps := sortedNum(conc), sortedNum(pre)
		fmt.Fprintf(w, "| consumers \\ prefetch |")
		for _, p := range ps {
			fmt.Fprintf(w, " %s |", p)
		}
		fmt.Fprintf(w, "\n|---|%s\n", strings.Repeat("---:|", len(ps)))
		for _, c := range cs {
			fmt.Fprintf(w, "| %s |", c)
			for _, p := range ps {
				fmt.Fprintf(w, " %s |", human(val[[2]string{c, p}]))
			}
			fmt.Fprintln(w)
		}
		// The knee: the cheapest configuration within 10% of the best.
		knee := ""
		for _, c := range cs {
			for _, p := range ps {
				if knee == "" && val[[2]string{c, p}] >= 0.9*best {
					knee = "consumers " + c + ", prefetch " + p
				}
			}
		}
		fmt.Fprintf(w, "\nBest: %s msgs/s at %s. Knee (first configuration, by consumers then prefetch, within 10%% of the best): %s; "+
			"past it, more messages in flight add no throughput on these %d cores.\n\n",
			human(best), bestKey, knee, runtime.NumCPU())
	}

	if rss != nil {
		fmt.Fprintf(w, "## Memory (RSS)\n\n")
		fmt.Fprintf(w, "`sealrun secrets serve` as its own process (overlay on its embedded etcd, so the etcd server is in the same process), read from /proc/PID/status. "+
			"It runs with the default limits (one credential, rate 10000/s, burst 20000): the old default of 200/s answered 93%% of this load with 429, which no honest client should see.\n\n")
		fmt.Fprintf(w, "| process | state | RSS | peak RSS (VmHWM) | load |\n|---|---|---:|---:|---|\n")
		fmt.Fprintf(w, "| proxy | idle (after start, one secret) | %s | %s | – |\n", mib(rss.idle), mib(rss.idleHWM))
		fmt.Fprintf(w, "| proxy | under load | %s (max sampled) | %s | %d clients on one credential, %s GET/s for %s, %d errors of which %d were 429 |\n\n",
			mib(rss.loadMax), mib(rss.loadHWM), rss.clients, human(rss.rate), rss.dur, rss.errors, rss.tooMany)
	}
	writeRunnerCost(w, res)
	writeRunnerFloor(w, res)
	writeProfiles(w, profiles)

	fmt.Fprintf(w, "## Every benchmark\n\n| package | benchmark | ns/op | ops/s | other metrics |\n|---|---|---:|---:|---|\n")
	for _, n := range order {
		r := res[n]
		var extra []string
		keys := make([]string, 0, len(r.metrics))
		for k := range r.metrics {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			extra = append(extra, human(r.metrics[k])+" "+k)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", r.pkg, n, human(r.nsop), human(opsPerSec(r)), strings.Join(extra, ", "))
	}
	fmt.Fprintf(w, "\nNot measured yet: two runner processes end to end (EndToEndHPKETwoRunners runs two Runners in one process; RunnerProcess runs one).\n")
	return missed
}

func goalText(g goal) string {
	switch {
	case g.max > 0:
		return "≤ " + human(g.max)
	case g.min > 0:
		return "≥ " + human(g.min)
	}
	return "–"
}

func sortedNum(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		a, _ := strconv.Atoi(out[i])
		b, _ := strconv.Atoi(out[j])
		return a < b
	})
	return out
}

func mib(kb int) string { return fmt.Sprintf("%.1f MiB", float64(kb)/1024) }

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// rssResult is the proxy's memory idle and under load, in KiB.
type rssResult struct {
	idle, idleHWM, loadMax, loadHWM int
	clients                         int
	rate                            float64
	dur                             time.Duration
	errors                          int64
	tooMany                         int64 // 429s: the default per-credential rate limit refusing the load
}

func procStatus(pid int, field string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return n
		}
	}
	return 0
}

// proxyRSS builds sealrun, starts the proxy and measures its RSS idle and
// while clients read a secret as fast as they can.
func proxyRSS() (*rssResult, error) {
	dir, err := os.MkdirTemp("", "sealrun-bench-rss-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "sealrun")
	if out, err := exec.Command("go", "build", "-o", bin, "./cmd/sealrun").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build: %v: %s", err, out)
	}
	sock := filepath.Join(dir, "s.sock")
	cfg := filepath.Join(dir, "proxy.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: {socket: %s}
audit_log: %s
storage:
  state: {backend: etcd, etcd: {data_dir: %s}}
  secrets: {backend: overlay, overlay: {store: etcd, master_key: %s, autogen: true}}
`, sock, filepath.Join(dir, "audit.log"), filepath.Join(dir, "etcd"), filepath.Join(dir, "master.key"))), 0o600); err != nil {
		return nil, err
	}
	keyOut, err := exec.Command(bin, "secrets", "apikey", "create", "--config", cfg, "--id", "bench", "--path", "/secrets/",
		"--verbs", "get,put,create").Output()
	if err != nil {
		return nil, fmt.Errorf("apikey create: %v", err)
	}
	key := strings.TrimSpace(string(keyOut))
	cmd := exec.Command(bin, "secrets", "serve", "--config", cfg)
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	do := func(method, path, body string) (int, error) {
		req, _ := http.NewRequest(method, "http://proxy"+path, strings.NewReader(body))
		req.Header.Set("CUSTODIA_AUTH_ID", "bench")
		req.Header.Set("CUSTODIA_AUTH_KEY", key)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if code, err := do("POST", "/secrets/bench/", ""); err == nil && (code == 201 || code == 409) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("proxy not serving after 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	val, _ := json.Marshal(map[string]string{"type": "simple", "value": strings.Repeat("v", 256)})
	if code, err := do("PUT", "/secrets/bench/k", string(val)); err != nil || code != 201 {
		return nil, fmt.Errorf("put: %d %v", code, err)
	}
	time.Sleep(3 * time.Second)
	pid := cmd.Process.Pid
	r := &rssResult{idle: procStatus(pid, "VmRSS"), idleHWM: procStatus(pid, "VmHWM"), clients: 16, dur: 5 * time.Second}
	var n atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(r.dur)
	for range r.clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				code, err := do("GET", "/secrets/bench/k", "")
				if code == http.StatusTooManyRequests {
					atomic.AddInt64(&r.tooMany, 1)
				}
				if err != nil || code != 200 {
					atomic.AddInt64(&r.errors, 1)
					continue
				}
				n.Add(1)
			}
		}()
	}
	t0 := time.Now()
	for time.Now().Before(stop) {
		if v := procStatus(pid, "VmRSS"); v > r.loadMax {
			r.loadMax = v
		}
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	r.rate = float64(n.Load()) / time.Since(t0).Seconds()
	r.loadHWM = procStatus(pid, "VmHWM")
	return r, nil
}

// writeRunnerCost explains the runner's end-to-end rate by where its CPU
// goes: this benchmark process (runners, embedded etcd, the publishing and
// answer-reading client) and the RabbitMQ node, per message, and the rate
// two cores could reach at that cost. It also reports the benchmark
// process's memory.
func writeRunnerCost(w *strings.Builder, res map[string]*result) {
	names := []string{"EndToEndHPKE", "EndToEndHPKEHybrid", "EndToEndHPKETwoRunners", "EndToEndHPKEMemoryState", "EndToEndStudioML", "RawAMQP"}
	var rows []string
	for _, n := range names {
		r := res[n]
		if r == nil {
			continue
		}
		self, broker := r.metrics["self-cpu-us/msg"], r.metrics["rabbit-cpu-us/msg"]
		if self+broker == 0 {
			continue
		}
		ceiling := float64(runtime.NumCPU()) * 1e6 / (self + broker)
		rss := "–"
		if idle, load := r.metrics["rss-idle-MB"], r.metrics["rss-load-MB"]; idle > 0 {
			rss = fmt.Sprintf("%s / %s MiB", human(idle), human(load))
		}
		rows = append(rows, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s |", n, human(opsPerSec(r)), human(self), human(broker),
			human(self+broker), human(ceiling), rss))
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "## Runner: where the CPU goes\n\n")
	fmt.Fprintf(w, "CPU µs per message in the benchmark process (runner(s), embedded etcd, the publishing client and the client reading responses) and in the RabbitMQ node, "+
		"and the rate %d fully busy cores could reach at that cost. RSS is the whole benchmark process (runner, embedded etcd, client, prepared messages), idle / under load.\n\n", runtime.NumCPU())
	fmt.Fprintf(w, "| benchmark | msgs/s | process µs/msg | RabbitMQ µs/msg | total µs/msg | ceiling msgs/s | RSS idle / load |\n|---|---:|---:|---:|---:|---:|---|\n")
	fmt.Fprintln(w, strings.Join(rows, "\n"))
	fmt.Fprintln(w)
}

// profile is the top of one benchmark's CPU profile.
type profile struct {
	pkg, bench string
	top        []topFn
}

type topFn struct {
	name      string
	flat, cum float64 // percent of the profile's samples
}

// topFunctions reads a CPU profile with `go tool pprof -top` and returns
// its heaviest functions by flat time.
func topFunctions(bin, prof string) ([]topFn, error) {
	out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=8", bin, prof).Output()
	if err != nil {
		return nil, err
	}
	var top []topFn
	inTable := false
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) >= 5 && f[0] == "flat" {
			inTable = true
			continue
		}
		if !inTable || len(f) < 6 {
			continue
		}
		flat, err1 := strconv.ParseFloat(strings.TrimSuffix(f[1], "%"), 64)
		cum, err2 := strconv.ParseFloat(strings.TrimSuffix(f[4], "%"), 64)
		if err1 != nil || err2 != nil {
			continue
		}
		top = append(top, topFn{name: shortFn(strings.Join(f[5:], " ")), flat: flat, cum: cum})
	}
	if len(top) == 0 {
		return nil, errors.New("no samples")
	}
	return top, nil
}

// shortFn drops the module path from a function name.
func shortFn(s string) string {
	s = strings.TrimPrefix(s, "github.com/sealrun/sealrun/")
	if i := strings.LastIndex(s, "/"); i >= 0 && !strings.Contains(s[:i], "(") {
		s = s[i+1:]
	}
	return s
}

// writeProfiles is the table of where each benchmark's CPU goes: the top
// functions of its profile by flat (self) time, in percent of the samples
// of the whole benchmark process (client, server, embedded etcd alike).
func writeProfiles(w *strings.Builder, profiles []profile) {
	if len(profiles) == 0 {
		return
	}
	fmt.Fprintf(w, "## Where the CPU goes (profiles)\n\n")
	fmt.Fprintf(w, "Each benchmark ran alone with `-test.cpuprofile`; the heaviest functions by self time, in %% of the benchmark process's samples "+
		"(the process holds the client, the server or runner and any embedded etcd; RunnerProcess and RawAMQPRoundTrip profile the load generator, their consumer runs in another process). "+
		"Repeat one with `go test -run '^$' -bench '^BenchmarkX$' -cpuprofile x.prof ./pkg && go tool pprof -top x.prof`.\n\n")
	fmt.Fprintf(w, "| package | benchmark | top functions (self %%) |\n|---|---|---|\n")
	for _, p := range profiles {
		var parts []string
		for i, t := range p.top {
			if i == 6 {
				break
			}
			parts = append(parts, fmt.Sprintf("%s %.1f%%", strings.ReplaceAll(t.name, "|", "\\|"), t.flat))
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", p.pkg, p.bench, strings.Join(parts, ", "))
	}
	fmt.Fprintln(w)
}

// writeRunnerFloor breaks the runner process's CPU per message down
// against its floor, every part measured in this run.
func writeRunnerFloor(w *strings.Builder, res map[string]*result) {
	rp, rt := res["RunnerProcess"], res["RawAMQPRoundTrip"]
	open, seal := res["OpenHPKEX25519"], res["SealResponse"]
	if rp == nil || rt == nil || open == nil || seal == nil {
		return
	}
	fmt.Fprintf(w, "## Runner as its own process: CPU per message against its floor\n\n")
	fmt.Fprintf(w, "The consumer under test in its own process (`sealrun runner`, the built binary, with its etcd as another process; or the plain amqp091 consumer of the raw round trip), its CPU read from /proc/PID/stat over the run; "+
		"the load generator (this benchmark process) and RabbitMQ separately.\n\n")
	fmt.Fprintf(w, "| benchmark | msgs/s | consumer process µs/msg | load generator µs/msg | RabbitMQ µs/msg | replies/msg |\n|---|---:|---:|---:|---:|---:|\n")
	fmt.Fprintf(w, "| RawAMQPRoundTrip (plain amqp091 consumer) | %s | %s | %s | %s | 1 |\n", human(opsPerSec(rt)), human(rt.metrics["consumer-cpu-us/msg"]),
		human(rt.metrics["client-cpu-us/msg"]), human(rt.metrics["rabbit-cpu-us/msg"]))
	fmt.Fprintf(w, "| RunnerProcess (sealrun runner, HPKE X25519, etcd JobRecords) | %s | %s | %s | %s | %s |\n\n", human(opsPerSec(rp)), human(rp.metrics["runner-cpu-us/msg"]),
		human(rp.metrics["client-cpu-us/msg"]), human(rp.metrics["rabbit-cpu-us/msg"]), human(rp.metrics["responses/msg"]))
	n := rp.metrics["responses/msg"]
	floor := open.nsop/1e3 + n*seal.nsop/1e3 + rt.metrics["consumer-cpu-us/msg"]
	fmt.Fprintf(w, "| floor part | µs/msg |\n|---|---:|\n")
	fmt.Fprintf(w, "| envelope open (OpenHPKEX25519) | %s |\n", human(open.nsop/1e3))
	fmt.Fprintf(w, "| response seals (SealResponse × %s reports: Started, log, final) | %s |\n", human(n), human(n*seal.nsop/1e3))
	fmt.Fprintf(w, "| AMQP client work (RawAMQPRoundTrip's consumer: receive, one reply with confirm, ack) | %s |\n", human(rt.metrics["consumer-cpu-us/msg"]))
	fmt.Fprintf(w, "| **floor** | %s |\n| runner process, measured | %s |\n| above the floor (JobRecords in etcd, the two extra report publishes, claim/replay bookkeeping, logging, metrics, Go runtime) | %s |\n\n",
		human(floor), human(rp.metrics["runner-cpu-us/msg"]), human(rp.metrics["runner-cpu-us/msg"]-floor))
}
