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
type goal struct {
	label, bench, base string
	min                float64
}

var goals = []goal{
	{"StudioML open vs raw RSA-4096 OAEP decrypt", "OpenStudioML", "RawRSADecryptOAEP", 0.95},
	{"HPKE (ML-KEM-768+X25519) open vs StudioML open", "OpenHPKE", "OpenStudioML", 50},
	{"HPKE (X25519) open vs StudioML open", "OpenHPKEX25519", "OpenStudioML", 50},
	{"overlay Get vs plain etcd driver Get", "Etcd/Get/overlay", "Etcd/Get/plain", 0.8},
	{"overlay Put vs plain etcd driver Put", "Etcd/Put/overlay", "Etcd/Put/plain", 0.8},
	{"proxy GET with client cache (ops/s)", "ProxyGetCached", "", 20000},
	{"proxy GET uncached vs raw etcd Get", "ProxyGetUncached", "RawEtcdGet", 0.8},
	{"proxy GET, server value cache off, vs raw etcd Get", "ProxyGetBackend", "RawEtcdGet", 0},
	{"audit log alone (fsync'd, group commit, same concurrency) vs raw etcd Get", "AuditOnly", "RawEtcdGet", 0},
	{"proxy GET uncached, audit log on tmpfs (diagnostic, not durable) vs raw etcd Get", "ProxyGetUncachedAuditTmpfs", "RawEtcdGet", 0},
	{"Vault KV v2 Get through the proxy vs direct (vault/api)", "ProxyGetVault", "VaultKVGetDirect", 0},
	{"overlay Get, Transit KEK vs file key", "OverlayGet/Get/transit-kek", "OverlayGet/Get/file-key", 0.9},
	{"runner StudioML e2e vs raw RSA-4096 decrypt on one core (goal: 0.85 × 2 cores)", "EndToEndStudioML", "RawRSADecryptOAEP", 1.7},
	{"runner HPKE (X25519) e2e, response consumed (msg/s)", "EndToEndHPKE", "", 5000},
	{"runner HPKE (ML-KEM-768+X25519) e2e (msg/s)", "EndToEndHPKEHybrid", "", 0},
	{"runner HPKE e2e, 2 runners vs 1", "EndToEndHPKETwoRunners", "EndToEndHPKE", 0},
	{"runner HPKE e2e, JobRecord writes unbatched vs batched", "EndToEndHPKEUnbatched", "EndToEndHPKE", 0},
	{"runner HPKE e2e vs raw AMQP publish→consume", "EndToEndHPKE", "RawAMQP", 0},
	{"runner StudioML e2e vs raw AMQP publish→consume", "EndToEndStudioML", "RawAMQP", 0},
	{"runner HPKE e2e, JobRecords in etcd vs in memory", "EndToEndHPKE", "EndToEndHPKEMemoryState", 0},
	{"migrate N secrets vs raw puts", "Migrate", "RawPut", 0.8},
	{"migrate N secrets vs raw puts in 64-put transactions", "Migrate", "RawPutBatch", 0},
	{"rotate master key over 100k records, 4 readers running (records/s)", "Rotate100k", "", 0},
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
	noScaling := flag.Bool("no-scaling", false, "skip the concurrency × prefetch scaling runs")
	noRSS := flag.Bool("no-rss", false, "skip the proxy memory measurement")
	strict := flag.Bool("strict", true, "exit 1 when a goal is missed")
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
	runs := [][]string{}
	for _, pkg := range []string{"./envelope", "./storage/overlay", "./storage/kek", "./proxy", "./migrate"} {
		runs = append(runs, []string{"-run", "^$", "-bench", ".", "-benchtime", *benchtime, "-count", "1", pkg})
	}
	runs = append(runs, []string{"-run", "^$", "-bench", "EndToEnd|RawAMQP", "-benchtime", fmt.Sprintf("%dx", *runnerN), "./runner"})
	if !*noScaling {
		runs = append(runs, []string{"-run", "^$", "-bench", "Scaling", "-benchtime", fmt.Sprintf("%dx", *scalingN), "./runner"})
	}
	for _, args := range runs {
		pkg := args[len(args)-1]
		fmt.Fprintf(os.Stderr, "== go test %s\n", strings.Join(args, " "))
		cmd := exec.Command("go", append([]string{"test"}, args...)...)
		cmd.Stdout = io.MultiWriter(&rawOut, os.Stderr)
		cmd.Stderr = io.MultiWriter(&rawOut, os.Stderr)
		if err := cmd.Run(); err != nil {
			failed = append(failed, fmt.Sprintf("`go test %s`: %v", strings.Join(args, " "), err))
			fmt.Fprintf(os.Stderr, "bench: %s failed: %v\n", pkg, err)
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
	missed := writeReport(&md, results, order, rss, failed, time.Since(start))
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

func writeReport(w *strings.Builder, res map[string]*result, order []string, rss *rssResult, failed []string, took time.Duration) int {
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
	fmt.Fprintf(w, "Ratio = ops/s of the measured path ÷ ops/s of its baseline (for a goal without a baseline: ops/s itself). Runner and migration rates are the benchmarks' own msgs/s and secrets/s.\n\n")
	fmt.Fprintf(w, "| comparison | measured ops/s | baseline ops/s | ratio | goal | status |\n|---|---:|---:|---:|---:|---|\n")
	missed := 0
	for _, g := range goals {
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
		fmt.Fprintf(w, "`sealrun secrets serve` as its own process (overlay on its embedded etcd, so the etcd server is in the same process), read from /proc/PID/status.\n\n")
		fmt.Fprintf(w, "| process | state | RSS | peak RSS (VmHWM) | load |\n|---|---|---:|---:|---|\n")
		fmt.Fprintf(w, "| proxy | idle (after start, one secret) | %s | %s | – |\n", mib(rss.idle), mib(rss.idleHWM))
		fmt.Fprintf(w, "| proxy | under load | %s (max sampled) | %s | %d clients, %s GET/s for %s, %d errors |\n\n",
			mib(rss.loadMax), mib(rss.loadHWM), rss.clients, human(rss.rate), rss.dur, rss.errors)
	}
	writeRunnerCost(w, res)

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
	fmt.Fprintf(w, "\nNot measured yet: two runner processes end to end (EndToEndHPKETwoRunners runs two Runners in one process).\n")
	return missed
}

func goalText(g goal) string {
	if g.min == 0 {
		return "–"
	}
	return "≥ " + human(g.min)
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
limits: {rate: 1000000, burst: 1000000}
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
				if code, err := do("GET", "/secrets/bench/k", ""); err != nil || code != 200 {
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
