package runner

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/internal/testenv"
)

// The benchmarks here run the consumer under test in its own process, so
// its CPU per message is read alone from /proc/PID/stat (utime+stime)
// rather than mixed with the load generator's, the broker's and etcd's:
//
//	go test -run XXX -bench 'RawAMQPRoundTrip|RunnerProcess' -benchtime 3000x ./runner/
//
// Both use the runner benchmark's shape: HPKE request bodies of the same
// size, prefetch 256, 64 messages handled at once, replies consumed by the
// client.

// envRawConsumer makes the test binary the raw round trip's consumer (see
// TestMain): "url queue reply-size".
const envRawConsumer = "SEALRUN_BENCH_RAW_CONSUMER"

const (
	benchPrefetch    = 256
	benchConcurrency = 64
)

// rawConsumerChild is a plain amqp091 consumer: each delivery is answered
// with one persistent reply to <queue>_response, published with confirms,
// then acked; 64 deliveries are handled at once. It prints "ready" once
// consuming and runs until stdin closes.
func rawConsumerChild() int {
	f := strings.Fields(os.Getenv(envRawConsumer))
	if len(f) != 3 {
		fmt.Fprintln(os.Stderr, "raw consumer: want url queue reply-size")
		return 2
	}
	size, _ := strconv.Atoi(f[2])
	reply := bytes.Repeat([]byte("r"), size)
	conn, err := amqp.Dial(f[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, "raw consumer:", err)
		return 1
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err == nil {
		err = ch.Qos(benchPrefetch, 0, false)
	}
	var ds <-chan amqp.Delivery
	if err == nil {
		ds, err = ch.Consume(f[1], "", false, false, false, false, nil)
	}
	pch, err2 := conn.Channel()
	if err == nil {
		err = err2
	}
	if err == nil {
		err = pch.Confirm(false)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "raw consumer:", err)
		return 1
	}
	rq := envelope.ResponseQueue(f[1])
	var wg sync.WaitGroup
	for range benchConcurrency {
		wg.Go(func() {
			for d := range ds {
				dc, err := pch.PublishWithDeferredConfirm("", rq, false, false,
					amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: d.MessageId, Body: reply})
				if err != nil {
					fmt.Fprintln(os.Stderr, "raw consumer: publish:", err)
					os.Exit(1)
				}
				if !dc.Wait() {
					fmt.Fprintln(os.Stderr, "raw consumer: reply nacked")
					os.Exit(1)
				}
				d.Ack(false)
			}
		})
	}
	fmt.Println("ready")
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // the benchmark closes stdin
	return 0
}

// child is a process the benchmark started; its CPU is read from /proc.
type child struct {
	cmd   *exec.Cmd
	stdin interface{ Close() error }
}

// procCPU is utime+stime of pid from /proc/PID/stat (clock ticks, 100 Hz
// on Linux x86-64).
func procCPU(pid int) time.Duration {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	j := bytes.LastIndexByte(st, ')')
	if j < 0 {
		return 0
	}
	f := strings.Fields(string(st[j+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+stime) * 10 * time.Millisecond
}

// responseSize is the length of one sealed final report, the size of the
// raw round trip's reply.
func responseSize(b *testing.B, q string) int {
	keys, err := envelope.NewPrefixMap(map[string]*envelope.MessagePublicKey{fixPrefix: fixResp.Public()})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	body, err := envelope.SealResponse(keys, q, &envelope.Report{Time: now, ExperimentID: "exp-1", UniqueID: "hpke-0123456789abcdef",
		ExecutorID: "runner-1", Progress: &envelope.Progress{Time: now, State: "SUCCESS", JSON: `{"status":"completed"}`}})
	if err != nil {
		b.Fatal(err)
	}
	return len(body)
}

// loadClient publishes bodies to queue (exchange, key) with confirms, as
// h.publish does, and counts the replies on <queue>_response whose
// message id isFinal accepts, acking each (prefetch 256).
func loadClient(b *testing.B, url, exchange, key, queue string, bodies [][]byte, isFinal func(string) bool) (answered *atomic.Int64, replies *atomic.Int64, publish func()) {
	answered, replies = new(atomic.Int64), new(atomic.Int64)
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Qos(benchPrefetch, 0, false); err != nil {
		b.Fatal(err)
	}
	rs, err := ch.Consume(envelope.ResponseQueue(queue), "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for d := range rs {
			d.Ack(false)
			replies.Add(1)
			if isFinal(d.MessageId) {
				answered.Add(1)
			}
		}
	}()
	publish = func() {
		pch, err := conn.Channel()
		if err != nil {
			b.Error(err)
			return
		}
		defer pch.Close()
		if err := pch.Confirm(false); err != nil {
			b.Error(err)
			return
		}
		var dcs []*amqp.DeferredConfirmation
		for i, body := range bodies {
			dc, err := pch.PublishWithDeferredConfirm(exchange, key, false, false,
				amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, MessageId: strconv.Itoa(i), Body: body})
			if err != nil {
				b.Error(err)
				return
			}
			dcs = append(dcs, dc)
		}
		for _, dc := range dcs {
			if !dc.Wait() {
				b.Error("publish nacked")
				return
			}
		}
	}
	return answered, replies, publish
}

// waitAnswered waits until n replies are counted, failing after 10 minutes
// or when the consumer process ends.
func waitAnswered(b *testing.B, answered *atomic.Int64, n int, exited <-chan struct{}) {
	deadline := time.Now().Add(10 * time.Minute)
	for answered.Load() < int64(n) {
		select {
		case <-exited:
			b.Fatalf("the consumer process ended after %d of %d answers", answered.Load(), n)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d answered", answered.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkRawAMQPRoundTrip is the runner's AMQP baseline of the same
// shape: the client publishes with confirms, a plain amqp091 consumer in
// its own process receives, publishes a reply with confirms to the reply
// queue and acks, and the client consumes the reply. consumer-cpu-us/msg
// is the AMQP client work a runner cannot avoid.
func BenchmarkRawAMQPRoundTrip(b *testing.B) {
	fixtures(b)
	node := testenvRabbit(b)
	url := node.VHost(b)
	q := fixPrefix + "bench_raw_rt"
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	ch, _ := conn.Channel()
	for _, name := range []string{q, envelope.ResponseQueue(q)} {
		if _, err := ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
			b.Fatal(err)
		}
	}
	conn.Close()
	body := sealHPKE(b, q)
	bodies := make([][]byte, b.N)
	for i := range bodies {
		bodies[i] = body
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRawConsumer+"="+url+" "+q+" "+strconv.Itoa(responseSize(b, q)))
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b.Cleanup(func() { stdin.Close(); <-exited })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		b.Fatalf("raw consumer did not start: %q %v", line, err)
	}
	answered, _, publish := loadClient(b, url, "", q, q, bodies, func(string) bool { return true })
	measureLoad(b, cmd.Process.Pid, "consumer-cpu-us/msg", answered, publish, exited)
}

// measureLoad publishes the benchmark's messages, waits until all are
// answered and reports the rate and the CPU per message of the measured
// process (as procUnit), this client and the broker.
func measureLoad(b *testing.B, pid int, procUnit string, answered *atomic.Int64, publish func(), exited <-chan struct{}) {
	c0, cpu0 := procCPU(pid), sampleCPU()
	b.ResetTimer()
	start := time.Now()
	published := make(chan struct{})
	go func() { defer close(published); publish() }()
	waitAnswered(b, answered, b.N, exited)
	el := time.Since(start)
	b.StopTimer()
	<-published
	proc, cpu := procCPU(pid)-c0, sampleCPU().sub(cpu0)
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
	b.ReportMetric(float64(proc.Microseconds())/float64(b.N), procUnit)
	b.ReportMetric(float64(cpu.self.Microseconds())/float64(b.N), "client-cpu-us/msg")
	b.ReportMetric(float64(cpu.broker.Microseconds())/float64(b.N), "rabbit-cpu-us/msg")
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// sealrunBinary builds cmd/sealrun once per test binary.
func sealrunBinary(b *testing.B) string {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sealrun-bench-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "sealrun")
		if out, err := exec.Command("go", "build", "-o", builtBin, "github.com/sealrun/sealrun/cmd/sealrun").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build sealrun: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		b.Fatal(buildErr)
	}
	return builtBin
}

// BenchmarkRunnerProcess is BenchmarkEndToEndHPKE with the runner as its
// own process: the built sealrun binary (`sealrun runner`), its etcd in
// another process (the etcd binary), and this process publishing and
// consuming the responses. runner-cpu-us/msg is the runner's own CPU per
// message, read from /proc; bench/report.go compares it with its floor
// (envelope open + response seals + the raw round trip's consumer work).
func BenchmarkRunnerProcess(b *testing.B) {
	fixtures(b)
	bin := sealrunBinary(b)
	etcdc := testenv.StartEtcdCluster(b, 1)
	node := testenvRabbit(b)
	url := node.VHost(b)
	q := fixPrefix + "bench_proc"
	dir := b.TempDir()
	keyDir := filepath.Join(dir, "keys")
	writeKeyDir(b, keyDir, fixPrefix)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfgPath := filepath.Join(dir, "runner.yaml")
	writeFile(b, cfgPath, []byte(fmt.Sprintf(`runner_id: bench-runner
amqp: {url: %q, prefetch: %d}
queues: [%s]
concurrency: %d
keys: {source: dir, dir: %s}
executor: {type: noop}
http: {listen: %q}
storage:
  state: {backend: etcd, etcd: {endpoints: [%q]}}
  secrets: {backend: none}
`, url, benchPrefetch, q, benchConcurrency, keyDir, addr, etcdc.Endpoints[0])))
	// The response queue exists before the runner starts, as
	// benchRunner's harness declares it.
	conn, err := amqp.Dial(url)
	if err != nil {
		b.Fatal(err)
	}
	ch, _ := conn.Channel()
	if _, err := ch.QueueDeclare(envelope.ResponseQueue(q), true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	conn.Close()
	var logBuf bytes.Buffer
	cmd := exec.Command(bin, "runner", "--config", cfgPath)
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	b.Cleanup(func() { cmd.Process.Kill(); <-exited })
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			b.Fatalf("runner exited: %s", logBuf.String())
		default:
		}
		if r, err := http.Get("http://" + addr + "/readyz"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("runner not ready after 60s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	bodies := make([][]byte, b.N)
	for i := range bodies {
		bodies[i] = sealHPKE(b, q)
	}
	answered, replies, publish := loadClient(b, url, DefaultExchange, "StudioML."+q, q, bodies, isFinalReport)
	measureLoad(b, cmd.Process.Pid, "runner-cpu-us/msg", answered, publish, exited)
	b.ReportMetric(float64(replies.Load())/float64(b.N), "responses/msg")
}
