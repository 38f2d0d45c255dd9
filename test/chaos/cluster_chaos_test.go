//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestClusterChaos runs the clustered system (cluster_test.go) under load
// and kills, one at a time, with messages in flight: the etcd leader, a
// RabbitMQ node, the active Vault node, a proxy and a runner. It asserts 0
// messages lost, 0 answered twice, every poison message dead-lettered,
// every job run once except the ones in flight on the killed runner, and 0
// failed secret reads outside the stated windows: a proxy's reads fail only
// while that proxy is down (from its kill to 1 s after its restart), and
// any proxy's from the active Vault node's kill until vaultWindowSlack
// after the killed node is back as a standby.
//
// SEALRUN_CLUSTER_CHAOS_N sets the number of good messages (default 2000);
// SEALRUN_CLUSTER_DEMO=1 runs it as `make cluster-demo`: a few messages, no
// runner kill, each step narrated on stdout.
// vaultWindowSlack: a read that began just before the failover ended may
// still be waiting out the probe's 2 s timeout.
const vaultWindowSlack = 3 * time.Second

func TestClusterChaos(t *testing.T) {
	demo := os.Getenv("SEALRUN_CLUSTER_DEMO") != ""
	n := 2000
	if demo {
		n = 40
	}
	if s := os.Getenv("SEALRUN_CLUSTER_CHAOS_N"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 20 {
			t.Fatalf("SEALRUN_CLUSTER_CHAOS_N=%q: want an integer ≥ 20", s)
		}
		n = v
	}
	start := time.Now()
	say := t.Logf
	if demo {
		say = func(format string, args ...any) {
			fmt.Printf("[%6.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
		}
	}
	const lease = 10 * time.Second
	c := startCluster(t, clusterOpts{runners: 3, proxies: 2, vault: true, lease: lease, job: "sleep 0.2", concurrency: 4}, say)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Minute)
	defer cancel()

	msgs, poison := buildMessages(t, c.keys, n, 500)
	good := len(msgs) - poison
	col := collect(t, c.amqpURL, c.keys.resp, msgs)
	pr := c.startProbe()
	var allowed []window
	var killedRunner string
	var runnerKill time.Time
	var runnerInflight []string

	type fault struct {
		name string
		do   func() string // does it and says what happened
	}
	faults := []fault{
		{"SIGKILL the etcd leader", func() string {
			t0 := time.Now()
			l, err := c.etcd.KillLeader(ctx)
			if err != nil {
				t.Fatal(err)
			}
			nl, err := c.etcd.WaitLeader(ctx)
			if err != nil {
				t.Fatal(err)
			}
			elected := time.Since(t0)
			if err := c.etcd.Restart(ctx, l); err != nil {
				t.Fatal(err)
			}
			return fmt.Sprintf("m%d killed; m%d leads after %v; m%d rejoined after %v", l, nl, elected.Round(time.Millisecond),
				l, time.Since(t0).Round(time.Millisecond))
		}},
		{"SIGKILL a RabbitMQ node", func() string {
			// Not node 0, which the test's own clients use.
			k := len(c.amqpURLs) - 1
			t0 := time.Now()
			c.rabbit.Kill(k)
			killed := time.Since(t0)
			if err := c.rabbit.Restart(ctx, k); err != nil {
				t.Fatal(err)
			}
			return fmt.Sprintf("%s killed (%v); restarted and rejoined after %v (%s had connected to it first)", c.rabbit.NodeName(k),
				killed.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), strings.Join(c.runnersOnNode(k), ", "))
		}},
		{"SIGKILL the active Vault node", func() string {
			a := c.vaultSettled(ctx)
			t0 := time.Now()
			c.vault.Kill(a)
			na, err := c.vault.WaitActive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			elected := time.Since(t0)
			c.vault.Restart(ctx, a)
			// The proxies' value caches step aside while their Vault watch
			// is broken (they cannot vouch for freshness), so a read can
			// reach Vault mid-failover and time out (the probe's 2 s).
			allowed = append(allowed, window{proxy: -1, from: t0, to: time.Now().Add(vaultWindowSlack), why: "Vault failover"})
			return fmt.Sprintf("n%d killed; n%d active after %v; n%d back as a standby after %v", a, na, elected.Round(time.Millisecond),
				a, time.Since(t0).Round(time.Millisecond))
		}},
		{"SIGKILL proxy 0", func() string {
			t0 := time.Now()
			c.proxies[0].kill(syscall.SIGKILL)
			c.startProxy(0)
			up := time.Now()
			// A read that failed on the dead socket returns right away; one
			// in flight at the kill fails at once too.
			allowed = append(allowed, window{proxy: 0, from: t0, to: up.Add(time.Second), why: "proxy 0 down"})
			return fmt.Sprintf("proxy 0 killed and serving again after %v (runners %s read keys through it)", up.Sub(t0).Round(time.Millisecond),
				strings.Join(c.runnersOf(0), ", "))
		}},
	}
	if !demo {
		faults = append(faults, fault{"SIGKILL a runner", func() string {
			r := len(c.runners) - 1
			killedRunner = c.specs[r].id
			waitFor(t, time.Minute, killedRunner+" running jobs", func() bool { return len(c.inFlight(killedRunner, time.Now())) > 0 })
			runnerInflight, runnerKill = c.killRunner(r)
			return fmt.Sprintf("%s killed with %d jobs in flight: %s", killedRunner, len(runnerInflight), strings.Join(runnerInflight, " "))
		}})
	}

	// Messages go out in one chunk per fault and one more; each fault
	// strikes when half of the chunk before it is answered, so it always
	// finds work in flight, whatever the message count.
	chunks := len(faults) + 1
	t0 := time.Now()
	published, pubGood := 0, 0
	publishChunk := func(k int) {
		end := len(msgs) * (k + 1) / chunks
		chunk := msgs[published:end]
		publishAll(t, c.amqpURL, chunk)
		for _, m := range chunk {
			if !m.poison {
				pubGood++
			}
		}
		published = end
	}
	say("load: %d messages (%d poison) to %d queues, in %d chunks; each job sleeps 0.2 s", len(msgs), poison, len(queues), chunks)
	type step struct {
		name, what string
		at         time.Duration
		answered   int
		during     int // answered while the fault's step ran
		took       time.Duration
	}
	var steps []step
	for k, f := range faults {
		publishChunk(k)
		before := pubGood - (len(msgs)/chunks)/2 // about half the chunk's good messages
		waitFor(t, 10*time.Minute, "progress before "+f.name, func() bool { return col.answered() >= before })
		ft := time.Now()
		at, ans := ft.Sub(t0), col.answered()
		say("fault %d: %s (%d of %d answered so far)", k+1, f.name, ans, good)
		what := f.do()
		during := col.answered() - ans
		steps = append(steps, step{f.name, what, at, ans, during, time.Since(ft)})
		say("  %s; %d answered meanwhile", what, during)
	}
	publishChunk(len(faults))
	waitFor(t, 10*time.Minute, "every response", func() bool { return col.answered() >= good })
	elapsed := time.Since(t0)
	pr.stop()
	got := col.finish()
	say("all %d good messages answered %v after the first was published (%.0f msg/s through the faults)", good,
		elapsed.Round(time.Millisecond), float64(good)/elapsed.Seconds())

	// Counts.
	distinct := checkAnswers(t, got, msgs)
	fresh, redelivered := col.dups()
	// A second, differently sealed response under the same id is the
	// takeover answering from the record a job whose runner was killed
	// after publishing and before recording the response: only a job
	// first run on the killed runner may have one.
	for _, id := range col.differing() {
		if !c.firstOnBefore(strings.TrimPrefix(id, "response-"), killedRunner, runnerKill) {
			t.Errorf("response %s: a copy differs from the first, and its job was not on the killed runner", id)
		}
	}
	lost := good - len(got)
	twice := 0
	for _, v := range got {
		if v > 1 {
			twice++
		}
	}
	say("answers: %d of %d good messages answered once, %d lost, %d answered twice; %d duplicate copies of a response (same message id: %d identical, AMQP at-least-once; %d resealed from the record by a takeover)",
		distinct, good, lost, twice, fresh+redelivered, fresh+redelivered-len(col.differing()), len(col.differing()))
	checkJobRecords(t, c.stateYAML, msgs)
	dead := checkDead(t, c.amqpURL, msgs, 1)
	say("poison: %d messages, %d dead-lettered (%d extra copies)", poison, dead.distinct, dead.extra)
	runs, again := c.checkClusterRuns(msgs, killedRunner, runnerKill)
	say("runs: %d job starts for %d good messages", runs, good)
	if killedRunner != "" {
		say("  %d jobs ran a second time, each first started on the killed runner and not recorded finished when it died (%d of them still running then)",
			again, len(runnerInflight))
		var delays []time.Duration
		for _, j := range runnerInflight {
			id := j[strings.Index(j, "-")+1:]
			if at, ok := col.answeredAt(id); ok {
				delays = append(delays, at.Sub(runnerKill))
			}
		}
		slices.Sort(delays)
		if len(delays) > 0 {
			say("the killed runner's in-flight jobs were answered %v to %v after the kill (claim_lease %v)",
				delays[0].Round(time.Millisecond), delays[len(delays)-1].Round(time.Millisecond), lease)
		}
	}
	total, outside := pr.check(t, allowed, say)
	say("secret reads: %d failed, %d of them outside the windows (a proxy down: its kill to 1 s after its restart; Vault failover: the kill to %v after the old active node is back)",
		total, outside, vaultWindowSlack)
	for _, w := range allowed {
		say("  window %-14s %s to %s (%v): %d failed", w.why, w.from.Format("15:04:05.000"), w.to.Format("15:04:05.000"),
			w.to.Sub(w.from).Round(time.Millisecond), w.failed)
	}
	for i := range c.runners {
		if c.specs[i].id != killedRunner && c.runners[i].exited() {
			t.Errorf("runner %s died during the run: %v", c.specs[i].id, c.runners[i].err)
		}
	}
	c.checkQueuesEmpty()
	say("runner log events: %v", runnerEvents(t, c.runnerLogs, c.keys.pass))
	for i := range c.proxies {
		if out, err := exec.Command(c.bin, "audit", "verify", c.auditLog(i)).CombinedOutput(); err != nil {
			t.Errorf("audit verify of proxy %d: %v %s", i, err, out)
		}
	}
	say("audit logs: each proxy's verifies")
	for _, s := range steps {
		t.Logf("%6.1fs %5d answered  %-32s took %-8v %4d answered meanwhile  %s", s.at.Seconds(), s.answered, s.name,
			s.took.Round(time.Millisecond), s.during, s.what)
	}
	if demo {
		c.printJobs(msgs, got)
	}
	if demo && !t.Failed() {
		say("every job answered once; stopping everything")
	}
}
