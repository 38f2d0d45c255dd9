//go:build chaos

// Package chaos runs the whole system as separate processes — a private
// RabbitMQ node, an etcd child, the secrets proxy and two runners (the
// sealrun binary) — and kills the services under load: RabbitMQ with
// SIGKILL three times, etcd once, the proxy once. Run it with
//
//	go test -tags chaos -timeout 30m ./test/chaos
//
// SEALRUN_CHAOS_N sets the number of good messages (default 10000);
// SEALRUN_BIN uses an already built sealrun instead of building one.
package chaos

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	storageconfig "github.com/sealrun/sealrun/storage/config"
)

func TestMain(m *testing.M) {
	if os.Getenv(envEtcdDir) != "" {
		os.Exit(runEtcdChild())
	}
	// Interrupted (make cluster-demo's trap, ^C): stop the RabbitMQ node;
	// every other process dies with this one (Pdeathsig).
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "chaos: %v: stopping RabbitMQ and every process started\n", s)
		testenv.StopRabbitMQ()
		os.Exit(1)
	}()
	code := m.Run()
	testenv.StopRabbitMQ()
	os.Exit(code)
}

const prefix = "chaos_"

var queues = []string{prefix + "q0", prefix + "q1", prefix + "q2", prefix + "q3"}

func messageCount(t *testing.T) int {
	n := 10000
	if s := os.Getenv("SEALRUN_CHAOS_N"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 100 {
			t.Fatalf("SEALRUN_CHAOS_N=%q: want an integer ≥ 100", s)
		}
		n = v
	}
	return n
}

func sealrunBin(t *testing.T, dir string) string {
	if b := os.Getenv("SEALRUN_BIN"); b != "" {
		return b
	}
	bin := filepath.Join(dir, "sealrun")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/sealrun/sealrun/cmd/sealrun").CombinedOutput()
	if err != nil {
		t.Fatalf("build sealrun: %v\n%s", err, out)
	}
	return bin
}

type msg struct {
	id, queue string
	job       string // the runner's job id: "hpke-" or "amqp-" and id
	body      []byte
	poison    bool
}

func TestChaos(t *testing.T) {
	n := messageCount(t)
	dir, err := os.MkdirTemp("", "sealrun-chaos-")
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
	bin := sealrunBin(t, dir)
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// Services: RabbitMQ (in-package helper), the runners' etcd (child).
	node := testenv.RabbitMQ(t)
	amqpURL := node.VHost(t)
	vhost := amqpURL[strings.LastIndex(amqpURL, "/")+1:]
	etcd := startEtcdChild(t, dir)

	keys := newKeySet(t)

	// The secrets proxy: overlay on its own embedded etcd.
	sock := filepath.Join(dir, "secrets.sock")
	proxyCfg := write("proxy.yaml", []byte(fmt.Sprintf(`listen: {socket: %s}
audit_log: %s
storage:
  state: {backend: etcd, etcd: {data_dir: %s}}
  secrets: {backend: overlay, overlay: {store: etcd, master_key: %s, autogen: true}}
`, sock, filepath.Join(dir, "audit.log"), filepath.Join(dir, "proxy-etcd"), filepath.Join(dir, "master.key"))))
	adminKey := runCmd(t, nil, bin, "secrets", "apikey", "create", "--config", proxyCfg, "--id", "admin",
		"--path", "/secrets/sealrun/", "--verbs", "get,list,put,create,delete")
	runnerKey := runCmd(t, nil, bin, "secrets", "apikey", "create", "--config", proxyCfg, "--id", "runner",
		"--path", "/secrets/sealrun/", "--verbs", "get,list,watch")
	adminKeyFile := write("admin.key", []byte(adminKey))
	runnerKeyFile := write("runner.key", []byte(runnerKey))
	startProxy := func() *proc {
		_ = os.Remove(sock)
		p := startProc(t, "proxy", filepath.Join(dir, "proxy.log"), nil, bin, "secrets", "serve", "--config", proxyCfg)
		waitFor(t, 60*time.Second, "proxy socket", func() bool {
			if p.exited() {
				t.Fatalf("proxy exited: %v", p.err)
			}
			_, err := os.Stat(sock)
			return err == nil
		})
		return p
	}
	proxy := startProxy()
	keys.store(t, bin, sock, adminKeyFile)
	declareResponseQueues(t, amqpURL, nil)

	// Two runner processes sharing the etcd child.
	stateYAML := fmt.Sprintf(`state: {backend: etcd, etcd: {endpoints: [%q], dial_timeout: 2s, timeout: 5s}}
secrets: {backend: none}
`, etcd.endpoint())
	runs := filepath.Join(dir, "runs.log")
	var runners []*proc
	var specs []runnerSpec
	var runnerLogs []string
	for i := range 2 {
		spec := runnerSpec{id: fmt.Sprintf("chaos-runner-%d", i), amqp: fmt.Sprintf("url: %q", amqpURL), sock: sock,
			keyFile: runnerKeyFile, httpAddr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), stateYAML: stateYAML,
			command: []string{"/bin/sh", "-c", "cat >/dev/null; echo {{.ID}} >>" + runs + "; echo ok"}}
		runners = append(runners, startRunner(t, bin, dir, spec))
		specs = append(specs, spec)
		runnerLogs = append(runnerLogs, filepath.Join(dir, spec.id+".log"))
	}
	for i, spec := range specs {
		waitRunnerReady(t, runners[i], spec.httpAddr, runnerLogs[i])
	}

	// Messages: half StudioML, half HPKE, round-robin over the queues, one
	// poison message in 500 (a stranger's signature or garbage).
	msgs, poison := buildMessages(t, keys, n, 500)
	t0 := time.Now()
	publishAll(t, amqpURL, msgs)
	t.Logf("published %d messages (%d poison) in %v", len(msgs), poison, time.Since(t0))

	// Responses are collected from the start (the drainer survives broker
	// restarts); faults are driven by how many have arrived.
	good := len(msgs) - poison
	col := collect(t, amqpURL, keys.resp, msgs)
	answered := col.answered
	faults := []struct {
		at   float64 // fraction of the good messages answered
		name string
		do   func()
	}{
		{0.10, "RabbitMQ SIGKILL #1", func() { node.Kill9AndRestart(t) }},
		{0.25, "etcd SIGKILL + restart", etcd.restart},
		{0.40, "RabbitMQ SIGKILL #2", func() { node.Kill9AndRestart(t) }},
		{0.55, "proxy restart (SIGTERM)", func() { proxy.kill(syscall.SIGTERM); proxy = startProxy() }},
		{0.70, "RabbitMQ SIGKILL #3", func() { node.Kill9AndRestart(t) }},
	}
	deadline := time.Now().Add(25 * time.Minute)
	for _, f := range faults {
		waitFor(t, time.Until(deadline), "progress before "+f.name, func() bool {
			return float64(answered()) >= f.at*float64(good)
		})
		ft := time.Now()
		f.do()
		t.Logf("%6.1fs  %5d answered  %s (took %v)", time.Since(t0).Seconds(), answered(), f.name, time.Since(ft).Round(time.Millisecond))
	}
	for i := range runners {
		if runners[i].exited() {
			t.Fatalf("runner %d died during the run: %v", i, runners[i].err)
		}
	}
	waitFor(t, time.Until(deadline), "every response", func() bool { return answered() >= good })
	elapsed := time.Since(t0)
	got := col.finish()
	t.Logf("all %d responses after %v (%.0f msg/s including faults)", good, elapsed, float64(good)/elapsed.Seconds())

	// Nothing left in the work queues, ready or unacked.
	checkQueuesEmpty(t, func(args ...string) string { return node.Ctl(t, args...) }, vhost)

	// Stop the runners (SIGTERM: clean shutdown), then check the records.
	for _, r := range runners {
		r.kill(syscall.SIGTERM)
	}
	// Responses are counted by their AMQP message id (one per job): every
	// good message has exactly one distinct response. A response published
	// again because its confirm was lost in a broker kill (AMQP publishing
	// is at-least-once), or redelivered to the drainer after a lost ack, has
	// the same message id and the same body; those copies are counted apart.
	distinct := checkAnswers(t, got, msgs)
	// Copies are not bounded here: besides runner re-publishes, they include
	// responses the drainer acked before a broker kill that the broker lost
	// (up to its prefetch), and a recovered message's redelivered flag is
	// not reliable after a SIGKILL.
	fresh, redelivered := col.dups()
	if d := col.differing(); len(d) > 0 {
		t.Errorf("responses with a copy that differs from the first: %v", d)
	}
	t.Logf("distinct responses: %d of %d; duplicate copies (same message id, identical body): %d (%d flagged redelivered)",
		distinct, good, fresh+redelivered, redelivered)
	checkJobRecords(t, stateYAML, msgs)
	checkDead(t, amqpURL, msgs, 3)
	checkRuns(t, runs, msgs)
	events := runnerEvents(t, runnerLogs, keys.pass)
	t.Logf("runner log events: %v", events)
	if out, err := exec.Command(bin, "audit", "verify", filepath.Join(dir, "audit.log")).CombinedOutput(); err != nil {
		t.Errorf("audit verify across a proxy restart: %v %s", err, out)
	}
}

// publishAll publishes every message persistent with publisher confirms.
func publishAll(t *testing.T, url string, msgs []msg) {
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const window = 500
	var pending []*amqp.DeferredConfirmation
	flush := func() {
		for _, dc := range pending {
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				t.Fatalf("publish not confirmed: %v", err)
			}
		}
		pending = pending[:0]
	}
	for _, m := range msgs {
		pub := amqp.Publishing{DeliveryMode: amqp.Persistent, ContentType: "application/json", Body: m.body}
		pub.MessageId = m.id // names StudioML jobs; HPKE ones carry the same id in their header
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", m.queue, true, false, pub)
		if err != nil {
			t.Fatal(err)
		}
		pending = append(pending, dc)
		if len(pending) == window {
			flush()
		}
	}
	flush()
}

// response is one distinct response: its report and AMQP message id.
type response struct {
	report    envelope.Report
	messageID string
}

// drainResponses consumes the response queues (surviving broker restarts),
// opens the first copy of each response (by AMQP message id) and sends it
// on out. dups reports the further copies; differs is called with the
// message id of a copy that is not identical to the first.
func drainResponses(t *testing.T, url string, key *envelope.MessagePrivateKey, out chan<- response, differs func(id string)) (stop func(), dups func() (fresh, redelivered int)) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	// A response the runner published again after a lost confirm, or this
	// drainer acked just before a broker kill, comes back: same message id.
	seen := map[string][32]byte{}
	var copies, redeliveredCopies atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			conn, err := amqp.Dial(url)
			if err != nil {
				time.Sleep(200 * time.Millisecond)
				continue
			}
			var dels []<-chan amqp.Delivery
			ch, err := conn.Channel()
			if err == nil {
				err = ch.Qos(200, 0, false)
			}
			for _, q := range queues {
				if err != nil {
					break
				}
				var d <-chan amqp.Delivery
				d, err = ch.Consume(envelope.ResponseQueue(q), "", false, false, false, false, nil)
				dels = append(dels, d)
			}
			if err != nil {
				conn.Close()
				continue
			}
			merged := make(chan amqp.Delivery)
			var fw sync.WaitGroup
			for _, d := range dels {
				fw.Add(1)
				go func() {
					defer fw.Done()
					for x := range d {
						merged <- x
					}
				}()
			}
			go func() { fw.Wait(); close(merged) }()
		loop:
			for {
				select {
				case <-ctx.Done():
					conn.Close()
					for range merged {
					}
					return
				case d, ok := <-merged:
					if !ok {
						break loop
					}
					if strings.HasSuffix(d.MessageId, "-log") || strings.Contains(d.MessageId, "-started-") {
						// A job's Started and "stop" reports: only its final
						// report is counted here.
						_ = d.Ack(false)
						continue
					}
					sum := sha256.Sum256(d.Body)
					if d.MessageId == "" {
						t.Errorf("response without a message id")
					}
					if first, dup := seen[d.MessageId]; dup {
						if d.Redelivered {
							redeliveredCopies.Add(1)
						} else {
							copies.Add(1)
						}
						if first != sum {
							differs(d.MessageId)
						}
						_ = d.Ack(false)
						continue
					}
					seen[d.MessageId] = sum
					plain, err := envelope.OpenPayload([]*envelope.MessagePrivateKey{key}, string(d.Body))
					if err != nil {
						t.Errorf("open response: %v", err)
					} else {
						var rep envelope.Report
						if err := json.Unmarshal(plain, &rep); err != nil || rep.Progress == nil || rep.Progress.State != "Success" {
							t.Errorf("report %s: %v", plain, err)
						} else {
							out <- response{report: rep, messageID: d.MessageId}
						}
					}
					_ = d.Ack(false)
				}
			}
			conn.Close()
		}
	}()
	return func() { cancel(); wg.Wait() }, func() (int, int) { return int(copies.Load()), int(redeliveredCopies.Load()) }
}

// checkJobRecords: every good message has exactly one JobRecord, finished
// with exit 0 and its response recorded under its response message id;
// every poison message has one rejected record (keyed by its body hash)
// with a reason code; there is nothing else.
func checkJobRecords(t *testing.T, stateYAML string, msgs []msg) {
	cfg, err := storageconfig.Decode(strings.NewReader(stateYAML))
	if err != nil {
		t.Fatalf("decode state config: %v", err)
	}
	st, err := storageconfig.Open(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	keys, err := st.List(t.Context(), secrets.KindJobRecord, "")
	if err != nil {
		t.Fatal(err)
	}
	recs := map[string]*secrets.JobRecord{}
	for _, k := range keys {
		rec := &secrets.JobRecord{MessageID: k}
		if _, err := st.Get(t.Context(), rec); err != nil {
			t.Fatal(err)
		}
		recs[k] = rec
	}
	want := 0
	for _, m := range msgs {
		want++
		if m.poison {
			sum := sha256.Sum256(m.body)
			rec := recs["rejected-"+hex.EncodeToString(sum[:])]
			if rec == nil || rec.State != "rejected" || rec.Queue != m.queue || rec.Reason == "" {
				t.Errorf("poison message %s: rejection record %+v", m.id, rec)
			}
			if recs[m.job] != nil {
				t.Errorf("poison message %s has a job record", m.id)
			}
			continue
		}
		rec := recs[m.job]
		if rec == nil || rec.State != "finished" || rec.Queue != m.queue || rec.ExitStatus == nil || *rec.ExitStatus != 0 ||
			rec.Responded.IsZero() || rec.ResponseID != "response-"+m.job {
			t.Errorf("message %s: JobRecord %+v, want finished on %s with exit 0 and its response recorded", m.id, rec, m.queue)
		}
	}
	if len(recs) != want {
		t.Errorf("%d JobRecords, want %d (one per message)", len(recs), want)
	}
}

// checkDead: the DLX holds only the poison messages, every one of them by
// distinct message id, each copy dead-lettered after exactly one delivery
// (x-death count 1). RabbitMQ persists acks and rejects lazily and
// dead-letters without a transaction: after a SIGKILL, a message rejected
// seconds earlier can come back although its dead copy was written. The
// runner rejects such a copy again (its rejection record spares a second
// verification), since a redelivery proves the first reject did not
// complete; so a poison message can have one more dead copy per broker
// kill it lived through — never more. Those copies are reported.
func checkDead(t *testing.T, url string, msgs []msg, kills int) (dead deadCount) {
	want := map[string]bool{}
	for _, m := range msgs {
		if m.poison {
			want[m.id] = true
		}
	}
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	copies := map[string]int{}
	for _, q := range queues {
		for {
			d, ok, err := ch.Get(q+".dead", true)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			if !want[d.MessageId] {
				t.Errorf("unexpected dead letter %q on %s", d.MessageId, q)
			}
			copies[d.MessageId]++
			deaths, _ := d.Headers["x-death"].([]any)
			if len(deaths) != 1 || deaths[0].(amqp.Table)["count"] != int64(1) {
				t.Errorf("dead letter %s: x-death %v, want one death", d.MessageId, d.Headers["x-death"])
			}
		}
	}
	extra := 0
	for id := range want {
		if copies[id] == 0 {
			t.Errorf("poison message %s not dead-lettered", id)
		}
		if copies[id] > 1 {
			extra += copies[id] - 1
			t.Logf("poison message %s dead-lettered %d times (reject lost in a broker kill)", id, copies[id])
		}
		if copies[id] > 1+kills {
			t.Errorf("poison message %s dead-lettered %d times: more than once plus once per broker kill (%d)", id, copies[id], kills)
		}
	}
	t.Logf("dead letters: %d poison messages, %d extra copies", len(want), extra)
	for id := range want {
		if copies[id] > 0 {
			dead.distinct++
		}
	}
	dead.extra = extra
	return dead
}

// deadCount is what checkDead found: poison messages dead-lettered, and
// extra copies of them.
type deadCount struct{ distinct, extra int }

// checkQueuesEmpty: no work queue in vhost holds a message, ready or
// unacked (ctl runs rabbitmqctl).
func checkQueuesEmpty(t *testing.T, ctl func(args ...string) string, vhost string) {
	t.Helper()
	waitFor(t, 30*time.Second, "empty work queues", func() bool {
		out := ctl("list_queues", "-p", vhost, "--no-table-headers", "--quiet", "name", "messages_ready", "messages_unacknowledged")
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 3 && !strings.HasSuffix(f[0], ".dead") && !strings.HasSuffix(f[0], "_response") && (f[1] != "0" || f[2] != "0") {
				return false
			}
		}
		return true
	})
}

// checkRuns: the executor ran exactly once per good message and never for
// a poison one, through every fault.
func checkRuns(t *testing.T, path string, msgs []msg) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	runs := map[string]int{}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for _, l := range lines {
		runs[l]++
	}
	again := 0
	for _, m := range msgs {
		if m.poison {
			if runs[m.job] != 0 {
				t.Errorf("poison message %s ran", m.id)
			}
			continue
		}
		switch c := runs[m.job]; {
		case c == 0:
			t.Errorf("message %s never ran", m.id)
		case c > 1:
			again += c - 1
			t.Errorf("message %s ran %d times", m.id, c)
		}
	}
	t.Logf("executor runs: %d (%d repeated)", len(lines), again)
}
