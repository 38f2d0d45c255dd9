//go:build chaos

package chaos

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/secrets"
)

// What TestChaos and the cluster tests share: the keys, the messages, the
// runner configuration and the response collector.

// keySet is the keys of a run: the StudioML message key (passphrase
// protected), the HPKE key, the response key, the queues' signer and a
// stranger whose signature makes a message poison.
type keySet struct {
	msg, resp        *envelope.MessagePrivateKey
	hpke             *envelope.HPKEPrivateKey
	signer, stranger *envelope.SigningPrivateKey
	pass             []byte
}

func newKeySet(t testing.TB) *keySet {
	t.Helper()
	k := &keySet{pass: []byte("chaos-passphrase")}
	var err error
	if k.msg, err = envelope.GenerateMessageKey(2048); err != nil {
		t.Fatal(err)
	}
	if k.resp, err = envelope.GenerateMessageKey(2048); err != nil {
		t.Fatal(err)
	}
	if k.hpke, err = envelope.GenerateHPKEKey(envelope.SuiteHPKEHybrid); err != nil {
		t.Fatal(err)
	}
	if k.signer, err = envelope.GenerateSigningKey(); err != nil {
		t.Fatal(err)
	}
	if k.stranger, err = envelope.GenerateSigningKey(); err != nil {
		t.Fatal(err)
	}
	return k
}

// store puts the runners' keys into the secrets proxy on sock with the
// sealrun CLI, as an operator does.
func (k *keySet) store(t testing.TB, bin, sock, adminKeyFile string) {
	t.Helper()
	msgPEM, err := k.msg.MarshalEncryptedPEM(k.pass)
	if err != nil {
		t.Fatal(err)
	}
	hkPEM, err := k.hpke.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString
	put := func(kind, name string, v any) {
		js, _ := json.Marshal(v)
		runCmd(t, js, bin, "secrets", "put", "--socket", sock, "--api-id", "admin", "--api-key-file", adminKeyFile,
			"--kind", kind, name)
	}
	put(secrets.KindMessagePrivateKey, "message", map[string]string{"key_id": "message", "pem": b64(msgPEM)})
	put(secrets.KindMessagePassphrase, "message", map[string]string{"key_id": "message", "passphrase": b64(k.pass)})
	put(secrets.KindMessagePrivateKey, "hpke", map[string]string{"key_id": "hpke", "pem": b64(hkPEM)})
	put(secrets.KindSigningKey, prefix, map[string]string{"queue_prefix": prefix, "public_key": k.signer.Public().AuthorizedKey()})
	put(secrets.KindResponseKey, prefix, map[string]string{"response_prefix": prefix,
		"public_key_pem": string(k.resp.Public().MarshalPKCS1PEM())})
}

// buildMessages seals n good messages, half StudioML, half HPKE,
// round-robin over the queues, plus one poison message in poisonEvery (a
// stranger's signature or garbage; a short run still gets at least four;
// 0: none).
func buildMessages(t testing.TB, k *keySet, n, poisonEvery int) (msgs []msg, poison int) {
	t.Helper()
	if poisonEvery > 0 && n < 4*poisonEvery {
		poisonEvery = max(n/4, 2)
	}
	for i := 0; i < n; i++ {
		q := queues[i%len(queues)]
		id := fmt.Sprintf("m-%06d", i)
		req := []byte(fmt.Sprintf(`{"experiment": {"key": %q}, "config": {}}`, id))
		var body []byte
		var err error
		job := "amqp-" + id
		if i%2 == 0 {
			body, err = envelope.SealStudioML(req, k.msg.Public(), k.signer)
		} else {
			body, err = envelope.SealHPKE(req, k.hpke.Public(), k.signer, envelope.SealHPKEOptions{Queue: q, ID: id})
			job = "hpke-" + id
		}
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, msg{id: id, job: job, queue: q, body: body})
		if poisonEvery > 0 && i%poisonEvery == poisonEvery/2 {
			pid := fmt.Sprintf("p-%06d", i)
			pb, err := envelope.SealStudioML(req, k.msg.Public(), k.stranger)
			if err != nil {
				t.Fatal(err)
			}
			if (i/poisonEvery)%2 == 1 {
				pb = []byte("not a sealed message " + pid)
			}
			msgs = append(msgs, msg{id: pid, job: "amqp-" + pid, queue: q, body: pb, poison: true})
			poison++
		}
	}
	return msgs, poison
}

// declareResponseQueues creates the response queues before the runners
// look for them.
func declareResponseQueues(t testing.TB, url string, args amqp.Table) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range queues {
		if _, err := ch.QueueDeclare(envelope.ResponseQueue(q), true, false, false, false, args); err != nil {
			t.Fatal(err)
		}
	}
}

// runnerSpec is one runner process's configuration.
type runnerSpec struct {
	id        string
	amqp      string // the YAML of the amqp: section's fields, e.g. `url: "amqp://…"`
	sock      string // its secrets proxy
	keyFile   string
	command   []string // executor argv
	httpAddr  string
	stateYAML string
	extra     string // more top-level YAML (claim_lease, …)
	// concurrency is the runner's concurrency (default 4).
	concurrency int
}

func (s runnerSpec) yaml() string {
	cmd, _ := json.Marshal(s.command)
	conc := s.concurrency
	if conc == 0 {
		conc = 4
	}
	return fmt.Sprintf(`runner_id: %s
amqp: {%s, reconnect_min: 200ms, reconnect_max: 2s}
queues: [%s]
dead_letter: {}
concurrency: %d
shutdown_grace: 10s
heartbeat: 1s
keys:
  source: proxy
  proxy: {socket: %s, api_id: runner, api_key_file: %s}
executor:
  command: %s
http: {listen: %q}
%s
storage:
  %s`, s.id, s.amqp, strings.Join(queues, ", "), conc, s.sock, s.keyFile, cmd, s.httpAddr, s.extra,
		strings.ReplaceAll(strings.TrimSpace(s.stateYAML), "\n", "\n  "))
}

// startRunner writes spec's config into dir and starts the runner; ready
// waits for its /readyz.
func startRunner(t testing.TB, bin, dir string, spec runnerSpec) *proc {
	t.Helper()
	cfg := filepath.Join(dir, spec.id+".yaml")
	if err := os.WriteFile(cfg, []byte(spec.yaml()), 0o600); err != nil {
		t.Fatal(err)
	}
	return startProc(t, spec.id, filepath.Join(dir, spec.id+".log"), nil, bin, "runner", "--config", cfg)
}

func waitRunnerReady(t testing.TB, p *proc, addr, log string) {
	t.Helper()
	waitFor(t, 60*time.Second, p.name+" ready", func() bool {
		if p.exited() {
			t.Fatalf("%s exited: %v (log %s)", p.name, p.err, log)
		}
		r, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == 200
	})
}

// collector counts the distinct responses drainResponses opens, by
// experiment id, and checks each names its job.
type collector struct {
	mu   sync.Mutex
	got  map[string]int
	at   map[string]time.Time // when the first response of each arrived
	ch   chan response
	done chan struct{}
	stop func()
	dups func() (fresh, redelivered int)
	// differ lists the message ids of responses with a copy unlike the
	// first (another seal of the same outcome, see checkDiffering).
	differ []string
}

func collect(t *testing.T, url string, key *envelope.MessagePrivateKey, msgs []msg) *collector {
	jobOf := map[string]string{}
	for _, m := range msgs {
		jobOf[m.id] = m.job
	}
	c := &collector{got: map[string]int{}, at: map[string]time.Time{}, ch: make(chan response, 256), done: make(chan struct{})}
	c.stop, c.dups = drainResponses(t, url, key, c.ch, func(id string) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.differ = append(c.differ, id)
	})
	go func() {
		defer close(c.done)
		for r := range c.ch {
			rep := r.report
			c.mu.Lock()
			if c.got[rep.ExperimentID] == 0 {
				c.at[rep.ExperimentID] = time.Now()
			}
			c.got[rep.ExperimentID]++
			c.mu.Unlock()
			if j := jobOf[rep.ExperimentID]; rep.UniqueID != j || r.messageID != "response-"+j {
				t.Errorf("response for %s carries unique id %q and message id %q, want %q and response-%[4]s",
					rep.ExperimentID, rep.UniqueID, r.messageID, j)
			}
		}
	}()
	return c
}

func (c *collector) differing() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.differ)
}

func (c *collector) answered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got)
}

func (c *collector) answeredAt(id string) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.at[id]
	return at, ok
}

// finish stops the drainer after a settling pause (late duplicates would
// show up in it) and returns the counts.
func (c *collector) finish() map[string]int {
	time.Sleep(3 * time.Second)
	c.stop()
	close(c.ch)
	<-c.done
	return c.got
}

// checkAnswers: every good message has exactly one distinct response (by
// AMQP message id), no poison message has one. It returns how many good
// messages were answered once.
func checkAnswers(t *testing.T, got map[string]int, msgs []msg) int {
	t.Helper()
	distinct, good := 0, 0
	for _, m := range msgs {
		if m.poison {
			if got[m.id] != 0 {
				t.Errorf("poison message %s answered", m.id)
			}
			continue
		}
		good++
		switch c := got[m.id]; {
		case c == 0:
			t.Errorf("message %s: no response", m.id)
		case c > 1:
			t.Errorf("message %s: %d distinct responses", m.id, c)
		default:
			distinct++
		}
	}
	if distinct != good {
		t.Errorf("%d distinct responses by message id, want %d", distinct, good)
	}
	return distinct
}

// runnerEvents counts how often each path of the claim logic was taken in
// the runners' logs, and fails if a log holds the passphrase.
func runnerEvents(t *testing.T, logs []string, pass []byte) map[string]int {
	events := map[string]int{}
	for _, path := range logs {
		log, _ := os.ReadFile(path)
		if strings.Contains(string(log), string(pass)) {
			t.Errorf("%s contains the passphrase", path)
		}
		for _, ev := range []string{"waiting for it instead of running it again", "already run and answered",
			"taking over an unfinished run", "answering a finished job whose response was never recorded", "retrying on the current broker session",
			"claim taken over by another runner", "rejected again"} {
			events[ev] += strings.Count(string(log), ev)
		}
	}
	return events
}
