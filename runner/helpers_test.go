package runner

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/internal/logfmt"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/memory"
)

func TestMain(m *testing.M) {
	if os.Getenv(envRawConsumer) != "" {
		os.Exit(rawConsumerChild())
	}
	code := m.Run()
	testenv.StopRabbitMQ()
	os.Exit(code)
}

const testRequest = `{"experiment": {"key": "exp-1", "status": "waiting", "pythonver": "3.9"}, "config": {"experimentLifetime": "20m"}}`

// Test keys are made once per test binary: RSA generation is slow.
var (
	fixOnce   sync.Once
	fixRSA    *envelope.MessagePrivateKey // opens requests
	fixResp   *envelope.MessagePrivateKey // opens responses (client side)
	fixSign   *envelope.SigningPrivateKey // the legitimate sender
	fixOther  *envelope.SigningPrivateKey // someone else
	fixHPKE   *envelope.HPKEPrivateKey
	fixPass   = []byte("test passphrase")
	fixPrefix = "rmq_test_"
)

func fixtures(t testing.TB) {
	t.Helper()
	fixOnce.Do(func() {
		var err error
		must := func(e error) {
			if e != nil {
				panic(e)
			}
		}
		fixRSA, err = envelope.GenerateMessageKey(2048)
		must(err)
		fixResp, err = envelope.GenerateMessageKey(2048)
		must(err)
		fixSign, err = envelope.GenerateSigningKey()
		must(err)
		fixOther, err = envelope.GenerateSigningKey()
		must(err)
		fixHPKE, err = envelope.GenerateHPKEKey(envelope.SuiteHPKEX25519)
		must(err)
	})
}

// writeKeyDir lays out the StudioML Kubernetes key directory with the
// fixtures, a signing key for each prefix and a response key for fixPrefix.
func writeKeyDir(t testing.TB, dir string, signing ...string) {
	writeKeyDirWith(t, dir, nil, signing...)
}

// writeKeyDirWith is writeKeyDir with another RSA message key (nil: fixRSA).
func writeKeyDirWith(t testing.TB, dir string, msgKey *envelope.MessagePrivateKey, signing ...string) {
	t.Helper()
	fixtures(t)
	if msgKey == nil {
		msgKey = fixRSA
	}
	pem, err := msgKey.MarshalEncryptedPEM(fixPass)
	if err != nil {
		t.Fatal(err)
	}
	hp, err := fixHPKE.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{
		"message/encryption/ssh-privatekey":    pem,
		"message/encryption/ssh-publickey":     msgKey.Public().MarshalPKCS1PEM(),
		"message/passphrase/ssh-passphrase":    fixPass,
		"message/hpke/test.key":                hp,
		"queues/response-encrypt/" + fixPrefix: fixResp.Public().MarshalPKCS1PEM(),
		"queues/response-encrypt/info":         []byte("dummy"),
		"queues/signing/info":                  []byte("dummy"),
	}
	for _, p := range signing {
		files["queues/signing/"+p] = []byte(fixSign.Public().AuthorizedKey())
	}
	for name, data := range files {
		writeFile(t, filepath.Join(dir, name), data)
	}
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// harness is a runner on a private vhost of the package's RabbitMQ node with
// a real embedded etcd.
type harness struct {
	t    testing.TB
	node *testenv.RabbitMQNode // nil on a cluster
	// url is where the test client connects; urls are the runner's on a
	// cluster (h.url is one of them).
	url    string
	urls   []string
	keyDir string
	store  *storage.Service
	r      *Runner
	cancel context.CancelFunc
	done   chan error
	cfg    *Config
}

type harnessOpt struct {
	queues    []string
	signing   []string // prefixes with a signing key
	exec      Executor
	keys      func(KeySource) KeySource
	configure func(*Config)
	responses bool // declare <queue>_response for each queue
	msgKey    *envelope.MessagePrivateKey
	// memoryState keeps JobRecords in memory instead of etcd (benchmarks
	// only: it shows what etcd costs).
	memoryState bool
	// keyFiles are written to the key directory too (path → content).
	keyFiles map[string][]byte
	// before runs on the vhost's AMQP URL before the runner starts.
	before func(url string)
	// logTo receives the runner's JSON log (in the production format).
	logTo io.Writer
	// cluster puts the runner on a fresh vhost of this RabbitMQ cluster,
	// with every node's URL (amqp.urls) and quorum queues; the test client
	// connects to the last node. Response queues are declared quorum.
	cluster *testenv.RabbitCluster
}

func newHarness(t testing.TB, o harnessOpt) *harness {
	t.Helper()
	fixtures(t)
	h := &harness{t: t, keyDir: t.TempDir()}
	if o.cluster != nil {
		h.urls = o.cluster.VHost(t)
		h.url = h.urls[len(h.urls)-1]
	} else {
		h.node = testenv.RabbitMQ(t)
		h.url = h.node.VHost(t)
	}
	if len(o.signing) == 0 {
		o.signing = []string{fixPrefix}
	}
	writeKeyDirWith(t, h.keyDir, o.msgKey, o.signing...)
	for name, data := range o.keyFiles {
		writeFile(t, filepath.Join(h.keyDir, name), data)
	}
	var state driver.Driver = memory.New()
	if !o.memoryState {
		state = etcd.New(testenv.Etcd(t), "/sealrun/state/")
	}
	var err error
	h.store, err = storage.New(memory.New(), state, storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.store.Close() })
	cfg := &Config{AMQP: AMQP{URL: h.url, ReconnectMin: 100 * time.Millisecond, ReconnectMax: time.Second},
		Queues: o.queues, DeadLetter: &DeadLetter{}, Keys: KeysConfig{Source: "dir", Dir: h.keyDir},
		Executor: ExecutorConfig{Type: "noop"}, Concurrency: 4, ShutdownGrace: 2 * time.Second, Heartbeat: -1}
	if o.cluster != nil {
		cfg.AMQP.URL, cfg.AMQP.URLs, cfg.AMQP.QueueType = "", h.urls, QueueQuorum
	}
	if o.configure != nil {
		o.configure(cfg)
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	h.cfg = cfg
	if o.responses {
		h.declareResponses()
	}
	if o.before != nil {
		o.before(h.url)
	}
	var ks KeySource = &DirKeySource{Dir: h.keyDir, Poll: 100 * time.Millisecond}
	if o.keys != nil {
		ks = o.keys(ks)
	}
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if o.logTo != nil {
		log = logfmt.New(o.logTo, slog.LevelDebug)
	}
	h.r, err = New(Options{Config: cfg, Keys: ks, Store: h.store, Executor: o.exec, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.r.Run(ctx) }()
	t.Cleanup(func() { h.stop() })
	select {
	case <-h.r.Ready():
	case err := <-h.done:
		t.Fatalf("runner ended before consuming: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("runner not consuming after 30s")
	}
	return h
}

// addRunner starts another Runner on the harness's vhost, queues, keys,
// executor type and state store, as a second runner process would be (its
// own connection, channels and JobRecord batching). It stops when the test
// ends.
func (h *harness) addRunner() *Runner {
	h.t.Helper()
	cfg := *h.cfg
	cfg.RunnerID += "-2"
	r, err := New(Options{Config: &cfg, Keys: &DirKeySource{Dir: h.keyDir, Poll: 100 * time.Millisecond},
		Store: h.store, Logger: slog.New(slog.NewJSONHandler(io.Discard, nil))})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			h.t.Error("second runner did not stop within 60s")
		}
	})
	select {
	case <-r.Ready():
	case err := <-done:
		h.t.Fatalf("second runner ended before consuming: %v", err)
	case <-time.After(30 * time.Second):
		h.t.Fatal("second runner not consuming after 30s")
	}
	return r
}

// stop cancels the runner and waits for Run to return.
func (h *harness) stop() error {
	h.cancel()
	select {
	case err, ok := <-h.done:
		if ok {
			close(h.done)
		}
		return err
	case <-time.After(60 * time.Second):
		h.t.Error("runner did not stop within 60s")
		return errors.New("timeout")
	}
}

func (h *harness) dial() *amqp.Connection {
	h.t.Helper()
	conn, err := amqp.Dial(h.url)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { conn.Close() })
	return conn
}

func (h *harness) declareResponses() {
	conn, err := amqp.Dial(h.url)
	if err != nil {
		h.t.Fatal(err)
	}
	defer conn.Close()
	ch, _ := conn.Channel()
	var args amqp.Table
	if h.cfg.AMQP.QueueType == QueueQuorum {
		args = amqp.Table{"x-queue-type": QueueQuorum}
	}
	for _, q := range h.cfg.Queues {
		if _, err := ch.QueueDeclare(envelope.ResponseQueue(q), true, false, false, false, args); err != nil {
			h.t.Fatal(err)
		}
	}
}

// publish sends bodies to queue the way the StudioML client does, with
// publisher confirms.
func (h *harness) publish(queue string, bodies ...[]byte) {
	h.t.Helper()
	conn := h.dial()
	ch, err := conn.Channel()
	if err != nil {
		h.t.Fatal(err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		h.t.Fatal(err)
	}
	var dcs []*amqp.DeferredConfirmation
	for _, b := range bodies {
		dc, err := ch.PublishWithDeferredConfirmWithContext(h.t.Context(), DefaultExchange, "StudioML."+queue, true, false,
			amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: b})
		if err != nil {
			h.t.Fatal(err)
		}
		dcs = append(dcs, dc)
	}
	for _, dc := range dcs {
		if ok, err := dc.WaitContext(h.t.Context()); !ok || err != nil {
			h.t.Fatalf("publish not confirmed: %v", err)
		}
	}
}

// queueLen is the number of ready messages in queue.
func (h *harness) queueLen(queue string) int {
	h.t.Helper()
	conn, err := amqp.Dial(h.url)
	if err != nil {
		h.t.Fatal(err)
	}
	defer conn.Close()
	ch, _ := conn.Channel()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	return q.Messages
}

// drain consumes up to n messages from queue within timeout.
func (h *harness) drain(queue string, n int, timeout time.Duration) []amqp.Delivery {
	h.t.Helper()
	conn := h.dial()
	ch, _ := conn.Channel()
	ds, err := ch.Consume(queue, "", true, false, false, false, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []amqp.Delivery
	deadline := time.After(timeout)
	for len(out) < n {
		select {
		case d := <-ds:
			out = append(out, d)
		case <-deadline:
			return out
		}
	}
	return out
}

// finalReports drains queue (a response queue) and keeps the jobs' final
// reports (ResponseMessageID), up to n of them, dropping their Started and
// "stop" log reports.
func (h *harness) finalReports(queue string, n int, timeout time.Duration) []amqp.Delivery {
	h.t.Helper()
	var out []amqp.Delivery
	for _, d := range h.drain(queue, 3*n, timeout) {
		if isFinalReport(d.MessageId) {
			out = append(out, d)
		}
	}
	return out
}

func isFinalReport(id string) bool {
	return !strings.HasSuffix(id, "-log") && !strings.Contains(id, "-started-")
}

func (h *harness) count(outcome string) int {
	return countMessages(h.t, h.r, outcome, "")
}

// countMessages sums sealrun_runner_messages_total for outcome (and reason,
// if not empty) over all suites.
func countMessages(t testing.TB, r *Runner, outcome, reason string) int {
	t.Helper()
	total := 0.0
	for s, v := range messageSeries(t, r) {
		if s.outcome == outcome && (reason == "" || s.reason == reason) {
			total += v
		}
	}
	return int(total)
}

type messageLabels struct{ outcome, suite, reason string }

// messageSeries is every series of sealrun_runner_messages_total.
func messageSeries(t testing.TB, r *Runner) map[messageLabels]float64 {
	t.Helper()
	mfs, err := r.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[messageLabels]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "sealrun_runner_messages_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			out[messageLabels{labels["outcome"], labels["suite"], labels["reason"]}] += m.GetCounter().GetValue()
		}
	}
	return out
}

// jobs returns every JobRecord.
func (h *harness) jobs() map[string]*secrets.JobRecord {
	h.t.Helper()
	keys, err := h.store.List(h.t.Context(), secrets.KindJobRecord, "")
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]*secrets.JobRecord{}
	for _, k := range keys {
		rec := &secrets.JobRecord{MessageID: k}
		if _, err := h.store.Get(h.t.Context(), rec); err != nil {
			h.t.Fatal(err)
		}
		out[k] = rec
	}
	return out
}

// eventually polls cond until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func sealStudio(t testing.TB, signer *envelope.SigningPrivateKey) []byte {
	t.Helper()
	b, err := envelope.SealStudioML([]byte(testRequest), fixRSA.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sealHPKE(t testing.TB, queue string) []byte {
	t.Helper()
	b, err := envelope.SealHPKE([]byte(testRequest), fixHPKE.Public(), fixSign, envelope.SealHPKEOptions{Queue: queue})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// countingExecutor counts runs per message id and can take a while.
type countingExecutor struct {
	mu    sync.Mutex
	runs  map[string]int
	total atomic.Int64
	delay time.Duration
}

func (e *countingExecutor) Run(ctx context.Context, job Job) (*Result, error) {
	e.mu.Lock()
	if e.runs == nil {
		e.runs = map[string]int{}
	}
	e.runs[job.ID]++
	e.mu.Unlock()
	e.total.Add(1)
	if e.delay > 0 {
		select {
		case <-time.After(e.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &Result{Output: []byte("ok")}, nil
}

func (e *countingExecutor) counts() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[string]int{}
	for k, v := range e.runs {
		out[k] = v
	}
	return out
}

type contextT = context.Context

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// testutilCounter sums every series of the named counter.
func testutilCounter(t testing.TB, r *Runner, name string) float64 {
	t.Helper()
	mfs, err := r.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

func testenvRabbit(t testing.TB) *testenv.RabbitMQNode { return testenv.RabbitMQ(t) }
