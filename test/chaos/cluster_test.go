//go:build chaos

package chaos

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/secrets"
)

// The clustered system: a 3-member etcd, RabbitMQ, a 3-node Vault on raft,
// two secrets proxies over them and several runner processes, each a
// separate process of the sealrun binary with its own state and log, as on
// separate hosts.

type clusterOpts struct {
	runners int
	proxies int
	// vault puts the secrets in the Vault cluster; else the overlay (the
	// master key file shared by the proxies) on the etcd cluster.
	vault bool
	// lease is the runners' claim_lease.
	lease time.Duration
	// job is the shell script each job runs (after recording its start).
	job string
	// concurrency per runner.
	concurrency int
	// later is how many of the runners are configured but left for the
	// test to start (startRunner).
	later int
}

type clusterSys struct {
	t        *testing.T
	dir, bin string
	say      func(format string, args ...any)

	etcd   *testenv.EtcdCluster
	vault  *testenv.VaultCluster
	rabbit *testenv.RabbitCluster
	// amqpURLs are the vhost's URLs on every RabbitMQ node; amqpURL, node
	// 0's, is the test's own clients' (the faults kill another node).
	amqpURLs []string
	amqpURL  string
	// runnerNode is the node each runner connects to first.
	runnerNode []int
	vhost      string

	keys                                      *keySet
	proxyCfgs, proxySocks, proxyLogs          []string
	proxies                                   []*proc
	runnerKeyFile, probeKeyFile, adminKeyFile string
	specs                                     []runnerSpec
	runners                                   []*proc
	runnerLogs                                []string
	stateYAML                                 string
	events                                    string // one line per job start and end: "start|end <job> <runner> <unix ns>"
}

func (c *clusterSys) write(name, data string) string {
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}

func startCluster(t *testing.T, o clusterOpts, say func(string, ...any)) *clusterSys {
	dir, err := os.MkdirTemp("", "sealrun-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs and data kept in %s", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	c := &clusterSys{t: t, dir: dir, bin: sealrunBin(t, dir), say: say, events: filepath.Join(dir, "events.log")}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	t0 := time.Now()
	c.etcd = testenv.StartEtcdCluster(t, 3)
	leader, err := c.etcd.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	say("etcd: 3 members up (%v), leader m%d", time.Since(t0).Round(time.Millisecond), leader)
	endpoints := fmt.Sprintf("[%s]", strings.Join(c.etcd.Endpoints, ", "))

	t0 = time.Now()
	c.rabbit = testenv.SharedRabbitCluster(t)
	c.amqpURLs = c.rabbit.VHost(t)
	c.amqpURL = c.amqpURLs[0]
	c.vhost = c.amqpURL[strings.LastIndex(c.amqpURL, "/")+1:]
	say("RabbitMQ: %d-node cluster up (%v)", len(c.amqpURLs), time.Since(t0).Round(time.Millisecond))

	// Proxy i's secrets section.
	secretsYAML := func(int) string {
		return fmt.Sprintf("{backend: overlay, overlay: {store: etcd, master_key: %s, autogen: true}}", filepath.Join(dir, "master.key"))
	}
	if o.vault {
		t0 = time.Now()
		c.vault = testenv.VaultRaftCluster(t, 3)
		active, err := c.vault.WaitActive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		say("Vault: 3 raft nodes up (%v), active n%d", time.Since(t0).Round(time.Millisecond), active)
		tok := c.write("vault.token", c.vault.RootToken)
		// Each proxy talks to a standby, which forwards to the active node:
		// killing the active node leaves every proxy's node up.
		secretsYAML = func(i int) string {
			return fmt.Sprintf("{backend: vault, vault: {address: %s, mount: secret, prefix: sealrun-cluster, token_file: %s}}",
				c.vault.Addrs[(active+1+i%2)%3], tok)
		}
	}
	for i := range o.proxies {
		sy := secretsYAML(i)
		sock := filepath.Join(dir, fmt.Sprintf("proxy-%d.sock", i))
		c.proxySocks = append(c.proxySocks, sock)
		c.proxyLogs = append(c.proxyLogs, filepath.Join(dir, fmt.Sprintf("proxy-%d.log", i)))
		c.proxyCfgs = append(c.proxyCfgs, c.write(fmt.Sprintf("proxy-%d.yaml", i), fmt.Sprintf(`listen: {socket: %s}
audit_log: %s
# Vault's watch polls, so the value cache is off with Vault unless asked
# for; without it a read in flight when the active node dies fails.
cache: {values: on}
storage:
  state: {backend: etcd, etcd: {endpoints: %s, prefix: /proxy/, dial_timeout: 2s, timeout: 10s}}
  secrets: %s
`, sock, filepath.Join(dir, fmt.Sprintf("audit-%d.log", i)), endpoints, sy)))
	}
	apikey := func(id, verbs string) string {
		return c.write(id+".key", runCmd(t, nil, c.bin, "secrets", "apikey", "create", "--config", c.proxyCfgs[0], "--id", id,
			"--path", "/secrets/sealrun/", "--verbs", verbs))
	}
	adminKeyFile := apikey("admin", "get,list,put,create,delete")
	c.runnerKeyFile = apikey("runner", "get,list,watch")
	c.probeKeyFile = apikey("probe", "get")
	for i := range o.proxies {
		c.proxies = append(c.proxies, nil)
		c.startProxy(i)
	}
	c.adminKeyFile = adminKeyFile
	say("proxies: %d up over the etcd cluster%s", o.proxies, map[bool]string{true: " and Vault", false: ""}[o.vault])
	c.keys = newKeySet(t)
	c.keys.store(t, c.bin, c.proxySocks[0], adminKeyFile)
	// Replicated like the request queues the runners declare.
	declareResponseQueues(t, c.amqpURL, amqp.Table{"x-queue-type": "quorum"})

	c.stateYAML = fmt.Sprintf(`state: {backend: etcd, etcd: {endpoints: %s, prefix: /runner/, dial_timeout: 2s, timeout: 10s}}
secrets: {backend: none}
`, endpoints)
	for i := range o.runners {
		id := fmt.Sprintf("host%d-runner", i)
		script := fmt.Sprintf(`echo start {{.ID}} %[1]s $(date +%%s%%N) >>%[2]s; cat >/dev/null; %[3]s
echo end {{.ID}} %[1]s $(date +%%s%%N) >>%[2]s; echo ok`, id, c.events, o.job)
		// Every node, starting from a different one per runner: a runner
		// fails over round-robin when its node goes.
		var urls []string
		for k := range c.amqpURLs {
			urls = append(urls, strconv.Quote(c.amqpURLs[(i+k)%len(c.amqpURLs)]))
		}
		c.runnerNode = append(c.runnerNode, i%len(c.amqpURLs))
		spec := runnerSpec{id: id, amqp: fmt.Sprintf("urls: [%s], queue_type: quorum", strings.Join(urls, ", ")), sock: c.proxySocks[i%o.proxies],
			keyFile: c.runnerKeyFile, httpAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), stateYAML: c.stateYAML,
			command: []string{"/bin/sh", "-c", script}, concurrency: o.concurrency,
			extra: fmt.Sprintf("claim_lease: %s", o.lease)}
		c.specs = append(c.specs, spec)
		c.runners = append(c.runners, nil)
		c.runnerLogs = append(c.runnerLogs, filepath.Join(dir, id+".log"))
		if i < o.runners-o.later {
			c.runners[i] = startRunner(t, c.bin, dir, spec)
		}
	}
	for i, spec := range c.specs {
		if c.runners[i] != nil {
			waitRunnerReady(t, c.runners[i], spec.httpAddr, c.runnerLogs[i])
		}
	}
	say("runners: %d processes up (claim_lease %v), each with its own config, log and proxy", o.runners-o.later, o.lease)
	return c
}

// startRunner starts runner i and waits until it is ready.
func (c *clusterSys) startRunner(i int) {
	c.runners[i] = startRunner(c.t, c.bin, c.dir, c.specs[i])
	waitRunnerReady(c.t, c.runners[i], c.specs[i].httpAddr, c.runnerLogs[i])
}

// startProxy (re)starts proxy i and waits until it answers on its socket
// (an unauthenticated request is refused: the proxy is serving).
func (c *clusterSys) startProxy(i int) {
	sock := c.proxySocks[i]
	_ = os.Remove(sock)
	p := startProc(c.t, fmt.Sprintf("proxy-%d", i), c.proxyLogs[i], nil, c.bin, "secrets", "serve", "--config", c.proxyCfgs[i])
	hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer hc.CloseIdleConnections()
	waitFor(c.t, 60*time.Second, "proxy serving", func() bool {
		if p.exited() {
			c.t.Fatalf("proxy %d exited: %v (log %s)", i, p.err, c.proxyLogs[i])
		}
		r, err := hc.Get("http://proxy/secrets/")
		if err != nil {
			return false
		}
		r.Body.Close()
		return true
	})
	c.proxies[i] = p
}

// jobEvent is a line of the events log.
type jobEvent struct {
	kind, job, runner string
	at                time.Time
}

func (c *clusterSys) jobEvents() []jobEvent {
	f, err := os.Open(c.events)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	var evs []jobEvent
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 4 {
			continue // a line being written
		}
		ns, err := strconv.ParseInt(fs[3], 10, 64)
		if err != nil {
			continue
		}
		evs = append(evs, jobEvent{kind: fs[0], job: fs[1], runner: fs[2], at: time.Unix(0, ns)})
	}
	return evs
}

// inFlight returns the jobs runner had started and not ended at t.
func (c *clusterSys) inFlight(runner string, t time.Time) []string {
	open := map[string]bool{}
	for _, e := range c.jobEvents() {
		if e.runner != runner || e.at.After(t) {
			continue
		}
		if e.kind == "start" {
			open[e.job] = true
		} else {
			delete(open, e.job)
		}
	}
	var jobs []string
	for j := range open {
		jobs = append(jobs, j)
	}
	slices.Sort(jobs)
	return jobs
}

// probe reads a secret through every proxy every 50 ms until stop, and
// records each failed read's time per proxy.
type probe struct {
	mu      sync.Mutex
	ok      []int
	fails   [][]time.Time
	errs    [][]string
	stop    func()
	stopped chan struct{}
}

func (c *clusterSys) startProbe() *probe {
	pr := &probe{ok: make([]int, len(c.proxySocks)), fails: make([][]time.Time, len(c.proxySocks)),
		errs: make([][]string, len(c.proxySocks)), stopped: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i, sock := range c.proxySocks {
		cl, err := client.New(client.Config{Socket: sock, ID: "probe", KeyFile: c.probeKeyFile, Timeout: 2 * time.Second, Retries: 1})
		if err != nil {
			c.t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cl.Close()
			for ctx.Err() == nil {
				_, err := cl.GetFresh(ctx, "sealrun/"+secrets.KindSigningKey+"/"+prefix)
				if ctx.Err() != nil {
					return
				}
				pr.mu.Lock()
				if err != nil {
					pr.fails[i] = append(pr.fails[i], time.Now())
					pr.errs[i] = append(pr.errs[i], err.Error())
				} else {
					pr.ok[i]++
				}
				pr.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
	}
	go func() { wg.Wait(); close(pr.stopped) }()
	pr.stop = func() { cancel(); <-pr.stopped }
	return pr
}

// window is a span of time in which some failures are allowed.
type window struct {
	proxy    int // -1: any proxy
	from, to time.Time
	why      string
	failed   int // set by check
}

// check counts the failed reads outside the windows (those fail the test)
// and reports the rest.
func (pr *probe) check(t *testing.T, allowed []window, say func(string, ...any)) (total, outside int) {
	for k := range allowed {
		allowed[k].failed = 0
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	for i, fs := range pr.fails {
		var first, last time.Time
		for k, at := range fs {
			total++
			// Counted in the window of this proxy's own outage if it is in
			// one, else in a window of every proxy's.
			in := false
			for _, own := range []bool{true, false} {
				for k, w := range allowed {
					if !in && (w.proxy == i) == own && (w.proxy < 0 || w.proxy == i) && !at.Before(w.from) && !at.After(w.to) {
						allowed[k].failed++
						in = true
					}
				}
			}
			if !in {
				outside++
				t.Errorf("proxy %d: secret read failed at %s, outside every allowed window: %s", i, at.Format("15:04:05.000"), pr.errs[i][k])
			}
			if first.IsZero() {
				first = at
			}
			last = at
		}
		if len(fs) > 0 {
			say("secret reads through proxy %d: %d ok, %d failed between %s and %s (%s)", i, pr.ok[i], len(fs),
				first.Format("15:04:05.000"), last.Format("15:04:05.000"), strings.Join(slices.Compact(slices.Sorted(slices.Values(pr.errs[i]))), "; "))
		} else {
			say("secret reads through proxy %d: %d ok, 0 failed", i, pr.ok[i])
		}
	}
	return total, outside
}

// checkClusterRuns: every good message ran at least once and no poison one
// ran; a job ran again only if its first run was on the runner SIGKILLed
// at kill and the second started after it — a run that had not been
// recorded finished when its runner died — and then once more.
func (c *clusterSys) checkClusterRuns(msgs []msg, killedRunner string, kill time.Time) (runs, again int) {
	count := map[string]int{}
	killed := map[string]bool{}
	first := map[string]jobEvent{}
	for _, e := range c.jobEvents() {
		if e.kind != "start" {
			continue
		}
		count[e.job]++
		runs++
		if f, ok := first[e.job]; !ok {
			first[e.job] = e
		} else if f.runner == killedRunner && f.at.Before(kill) && e.at.After(kill) {
			killed[e.job] = true
		}
	}
	for _, m := range msgs {
		n := count[m.job]
		switch {
		case m.poison && n != 0:
			c.t.Errorf("poison message %s ran", m.id)
		case m.poison:
		case n == 0:
			c.t.Errorf("message %s never ran", m.id)
		case n == 2 && killed[m.job]:
			again++
		case n > 1:
			c.t.Errorf("message %s ran %d times (in flight on a killed runner: %v)", m.id, n, killed[m.job])
		}
	}
	return runs, again
}

// killRunner SIGKILLs runner i (its process group: the runner alone; its
// jobs run in their own process groups and outlive it, as on a host where
// only the runner process dies) and returns the jobs in flight on it.
func (c *clusterSys) killRunner(i int) (inflight []string, at time.Time) {
	c.runners[i].kill(syscall.SIGKILL)
	at = time.Now()
	return c.inFlight(c.specs[i].id, at), at
}

// runnersOf names the runners that read their keys through proxy i.
func (c *clusterSys) runnersOf(i int) []string {
	var ids []string
	for _, s := range c.specs {
		if s.sock == c.proxySocks[i] {
			ids = append(ids, s.id)
		}
	}
	return ids
}

func (c *clusterSys) auditLog(i int) string {
	return filepath.Join(c.dir, fmt.Sprintf("audit-%d.log", i))
}

func (c *clusterSys) checkQueuesEmpty() {
	checkQueuesEmpty(c.t, func(args ...string) string { return c.rabbit.Ctl(c.t, args...) }, c.vhost)
}

// vaultSettled waits until one node is active and every running node names
// it as the leader (a standby that still follows an old leader would make
// the failover time meaningless), and returns it.
func (c *clusterSys) vaultSettled(ctx context.Context) int {
	var active int
	waitFor(c.t, time.Minute, "a settled Vault cluster", func() bool {
		a := c.vault.Active(ctx)
		if a < 0 {
			return false
		}
		for i := range c.vault.Addrs {
			if !c.vault.Running(i) {
				continue
			}
			lctx, cancel := context.WithTimeout(ctx, time.Second)
			l, err := c.vault.Client(i).Sys().LeaderWithContext(lctx)
			cancel()
			if err != nil || (l.LeaderAddress != c.vault.Addrs[a] && !(i == a && l.IsSelf)) {
				return false
			}
		}
		active = a
		return true
	})
	return active
}

// printJobs prints, per good message, how often it was answered and run,
// and on which runners it started.
func (c *clusterSys) printJobs(msgs []msg, got map[string]int) {
	on := map[string][]string{}
	for _, e := range c.jobEvents() {
		if e.kind == "start" {
			on[e.job] = append(on[e.job], e.runner)
		}
	}
	fmt.Printf("\n%-10s %-15s %8s %5s  %s\n", "message", "job", "answered", "runs", "ran on")
	for _, m := range msgs {
		if m.poison {
			fmt.Printf("%-10s %-15s %8d %5d  (poison: dead-lettered)\n", m.id, m.job, got[m.id], len(on[m.job]))
			continue
		}
		fmt.Printf("%-10s %-15s %8d %5d  %s\n", m.id, m.job, got[m.id], len(on[m.job]), strings.Join(on[m.job], ", "))
	}
	fmt.Println()
}

// runnersOnNode names the runners whose first URL is RabbitMQ node i's.
func (c *clusterSys) runnersOnNode(i int) []string {
	var ids []string
	for k, s := range c.specs {
		if c.runnerNode[k] == i {
			ids = append(ids, s.id)
		}
	}
	return ids
}

// firstOnBefore says whether job's first run started on runner before t.
func (c *clusterSys) firstOnBefore(job, runner string, t time.Time) bool {
	for _, e := range c.jobEvents() {
		if e.kind == "start" && e.job == job {
			return e.runner == runner && e.at.Before(t)
		}
	}
	return false
}
