package runner

import (
	"bytes"
	"crypto/rand"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
)

// Run with a fixed count so each benchmark sets up its broker vhost and etcd
// once, e.g.:
//
//	go test -run XXX -bench . -benchtime 3000x ./runner/
//
// Each reports msgs/s; BenchmarkEndToEndStudioML also reports the raw
// RSA-4096 decrypt rate of this machine and the target
// (0.85 × cores × that rate).

var (
	rsa4096Once sync.Once
	rsa4096     *envelope.MessagePrivateKey
)

func key4096(b *testing.B) *envelope.MessagePrivateKey {
	rsa4096Once.Do(func() {
		var err error
		if rsa4096, err = envelope.GenerateMessageKey(4096); err != nil {
			panic(err)
		}
	})
	return rsa4096
}

// benchOpt is one end-to-end benchmark's setup.
type benchOpt struct {
	msgKey      *envelope.MessagePrivateKey
	memoryState bool
	// concurrency and prefetch of the consumer (0: 64 and 256, enough in
	// flight to keep both cores and the JobRecord batches busy).
	concurrency, prefetch int
	// noResponse leaves <queue>_response undeclared, so no response is
	// sealed or published (what these benchmarks measured before).
	noResponse bool
	// runners is how many Runner instances consume the queue (0: 1).
	runners int
	// keyFiles are added to the runner's key directory.
	keyFiles map[string][]byte
	// unbatched writes each JobRecord put on its own, as before the group
	// commit (jobbatch.go).
	unbatched bool
}

// benchRunner runs bodies through runners with a no-op executor and
// reports messages per second from first publish to last finished job and
// (unless noResponse) last response consumed by the client,
// with the CPU it took per message in this process (runners, embedded
// etcd, the publishing client) and in RabbitMQ, and this process's RSS.
func benchRunner(b *testing.B, q string, o benchOpt, seal func() []byte) {
	fixtures(b)
	if o.concurrency == 0 {
		o.concurrency, o.prefetch = 64, 256
	}
	bodies := make([][]byte, b.N)
	for i := range bodies {
		bodies[i] = seal()
	}
	h := newHarness(b, harnessOpt{queues: []string{q}, msgKey: o.msgKey, memoryState: o.memoryState, keyFiles: o.keyFiles,
		responses: !o.noResponse, configure: func(c *Config) {
			c.Concurrency = o.concurrency
			c.AMQP.Prefetch = o.prefetch
			c.DeadLetter = nil
		}})
	runners := []*Runner{h.r}
	for i := 1; i < o.runners; i++ {
		runners = append(runners, h.addRunner())
	}
	for _, r := range runners {
		r.jobs.batch.unsupported.Store(o.unbatched)
	}
	// Poll the messages counter alone: a full Gather reads /proc for the
	// process collector and cost 10% of the CPU at 5 ms polls.
	count := func(outcome string) int {
		n := 0
		for _, r := range runners {
			n += counterSum(r.m.messages, "outcome", outcome)
		}
		return n
	}
	// The client side consumes the responses, as a StudioML client does
	// (responses left in the queue would also cost RabbitMQ disk writes
	// that a consumed message avoids).
	var answered atomic.Int64
	if !o.noResponse {
		ch, err := h.dial().Channel()
		if err != nil {
			b.Fatal(err)
		}
		if err := ch.Qos(256, 0, false); err != nil {
			b.Fatal(err)
		}
		rs, err := ch.Consume(envelope.ResponseQueue(q), "", false, false, false, false, nil)
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			for d := range rs {
				d.Ack(false)
				if isFinalReport(d.MessageId) {
					answered.Add(1)
				}
			}
		}()
	}
	runtime.GC()
	idleRSS := rssBytes()
	cpu0 := sampleCPU()
	b.ResetTimer()
	start := time.Now()
	// Publish concurrently with consumption, and wait for the publisher
	// before returning (its confirms outlive a short b.N=1 round).
	published := make(chan struct{})
	go func() { defer close(published); h.publish(q, bodies...) }()
	defer func() { <-published }()
	deadline := time.Now().Add(10 * time.Minute)
	var loadRSS uint64
	polls := 0
	for count(outcomeDone) < b.N || (!o.noResponse && answered.Load() < int64(b.N)) {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d done, %d answered", count(outcomeDone), b.N, answered.Load())
		}
		if n := count(outcomeRejected) + count(outcomeRequeued); n > 0 {
			b.Fatalf("%d messages rejected or requeued", n)
		}
		if polls++; polls%20 == 0 {
			loadRSS = max(loadRSS, rssBytes())
		}
		time.Sleep(5 * time.Millisecond)
	}
	el := time.Since(start)
	b.StopTimer()
	cpu := sampleCPU().sub(cpu0)
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
	var batches, items int64
	for _, r := range runners {
		batches, items = batches+r.jobs.batch.batches.Load(), items+r.jobs.batch.items.Load()
	}
	if batches > 0 {
		b.ReportMetric(float64(items)/float64(batches), "puts/batch")
	}
	b.ReportMetric(float64(cpu.self.Microseconds())/float64(b.N), "self-cpu-us/msg")
	b.ReportMetric(float64(cpu.broker.Microseconds())/float64(b.N), "rabbit-cpu-us/msg")
	b.ReportMetric(float64(idleRSS)/(1<<20), "rss-idle-MB")
	b.ReportMetric(float64(loadRSS)/(1<<20), "rss-load-MB")
}

func BenchmarkEndToEndStudioML(b *testing.B) {
	k := key4096(b)
	// The raw single-core RSA-4096 decrypt rate bounds the suite.
	payload, err := envelope.SealPayload(k.Public(), []byte(testRequest))
	if err != nil {
		b.Fatal(err)
	}
	keys := []*envelope.MessagePrivateKey{k}
	n, t0 := 0, time.Now()
	for time.Since(t0) < time.Second {
		if _, err := envelope.OpenPayload(keys, payload); err != nil {
			b.Fatal(err)
		}
		n++
	}
	rate := float64(n) / time.Since(t0).Seconds()
	// The same on every core at once: what this machine, shared as it is,
	// gives all cores right now (cores × rate assumes they are idle).
	var all atomic.Int64
	var wg sync.WaitGroup
	t0 = time.Now()
	for range runtime.NumCPU() {
		wg.Go(func() {
			for time.Since(t0) < time.Second {
				if _, err := envelope.OpenPayload(keys, payload); err != nil {
					b.Error(err)
					return
				}
				all.Add(1)
			}
		})
	}
	wg.Wait()
	allRate := float64(all.Load()) / time.Since(t0).Seconds()
	benchRunner(b, fixPrefix+"bench_studioml", benchOpt{msgKey: k}, func() []byte {
		m, err := envelope.SealStudioML([]byte(testRequest), k.Public(), fixSign)
		if err != nil {
			b.Fatal(err)
		}
		return m
	})
	b.ReportMetric(rate, "rsa4096-decrypts/s/core")
	b.ReportMetric(0.85*float64(runtime.NumCPU())*rate, "target-msgs/s")
	b.ReportMetric(allRate, "rsa4096-decrypts/s/all-cores")
}

// BenchmarkEndToEndHPKE is the HPKE suite the runner's fixtures seal with,
// hpke-x25519 (DHKEM(X25519), HKDF-SHA256, ChaCha20-Poly1305), each message
// answered on <queue>_response.
func BenchmarkEndToEndHPKE(b *testing.B) {
	q := fixPrefix + "bench_hpke"
	benchRunner(b, q, benchOpt{}, func() []byte { return sealHPKE(b, q) })
}

// BenchmarkEndToEndHPKEHybrid is BenchmarkEndToEndHPKE with the
// post-quantum hybrid suite, hpke-mlkem768x25519 (ML-KEM-768 + X25519).
func BenchmarkEndToEndHPKEHybrid(b *testing.B) {
	q := fixPrefix + "bench_hpke_hybrid"
	k, err := envelope.GenerateHPKEKey(envelope.SuiteHPKEHybrid)
	if err != nil {
		b.Fatal(err)
	}
	pem, err := k.MarshalPEM()
	if err != nil {
		b.Fatal(err)
	}
	benchRunner(b, q, benchOpt{keyFiles: map[string][]byte{"message/hpke/hybrid.key": pem}}, func() []byte {
		m, err := envelope.SealHPKE([]byte(testRequest), k.Public(), fixSign, envelope.SealHPKEOptions{Queue: q})
		if err != nil {
			b.Fatal(err)
		}
		return m
	})
}

// BenchmarkEndToEndHPKENoResponse is BenchmarkEndToEndHPKE without a
// response queue: no response is sealed or published.
func BenchmarkEndToEndHPKENoResponse(b *testing.B) {
	q := fixPrefix + "bench_hpke_noresp"
	benchRunner(b, q, benchOpt{noResponse: true}, func() []byte { return sealHPKE(b, q) })
}

// BenchmarkEndToEndHPKEUnbatched is BenchmarkEndToEndHPKE with one etcd
// transaction per JobRecord write, as before the group commit.
func BenchmarkEndToEndHPKEUnbatched(b *testing.B) {
	q := fixPrefix + "bench_hpke_unbatched"
	benchRunner(b, q, benchOpt{unbatched: true}, func() []byte { return sealHPKE(b, q) })
}

// BenchmarkEndToEndHPKEMemoryState is BenchmarkEndToEndHPKE with JobRecords
// in memory: the difference is what the JobRecord transactions cost. Not a
// supported configuration (no duplicate check across runners).
func BenchmarkEndToEndHPKEMemoryState(b *testing.B) {
	q := fixPrefix + "bench_hpke_mem"
	benchRunner(b, q, benchOpt{memoryState: true}, func() []byte { return sealHPKE(b, q) })
}

// BenchmarkEndToEndHPKETwoRunners is BenchmarkEndToEndHPKE with two Runner
// instances in this process on the same queue and the same etcd (each with
// its own connection, channels and JobRecord batching, as two runner
// processes would have), each with half the concurrency.
func BenchmarkEndToEndHPKETwoRunners(b *testing.B) {
	q := fixPrefix + "bench_hpke_two"
	benchRunner(b, q, benchOpt{runners: 2, concurrency: 32, prefetch: 128}, func() []byte { return sealHPKE(b, q) })
}

// BenchmarkRawAMQP is the broker's own ceiling on this machine: persistent
// messages of a similar size published with confirms and consumed with
// manual acks, prefetch 256, nothing else.
func BenchmarkRawAMQP(b *testing.B) {
	fixtures(b)
	h := &harness{t: b}
	h.node = testenvRabbit(b)
	h.url = h.node.VHost(b)
	body := make([]byte, 2048)
	rand.Read(body)
	conn := h.dial()
	ch, _ := conn.Channel()
	q := "bench_raw"
	if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if err := ch.Qos(256, 0, false); err != nil {
		b.Fatal(err)
	}
	ds, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	pubConn := h.dial()
	pch, _ := pubConn.Channel()
	pch.Confirm(false)
	cpu0 := sampleCPU()
	b.ResetTimer()
	start := time.Now()
	errs := make(chan error, 1)
	go func() {
		var dcs []*amqp.DeferredConfirmation
		for i := 0; i < b.N; i++ {
			dc, err := pch.PublishWithDeferredConfirmWithContext(b.Context(), "", q, false, false,
				amqp.Publishing{DeliveryMode: amqp.Persistent, Body: body})
			if err != nil {
				errs <- err
				return
			}
			dcs = append(dcs, dc)
			if len(dcs) == 512 { // bounded outstanding confirms, like a real client
				for _, d := range dcs {
					d.Wait()
				}
				dcs = dcs[:0]
			}
		}
		for _, d := range dcs {
			d.Wait()
		}
		errs <- nil
	}()
	for i := 0; i < b.N; i++ {
		d := <-ds
		d.Ack(false)
	}
	el := time.Since(start)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	cpu := sampleCPU().sub(cpu0)
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
	b.ReportMetric(float64(cpu.self.Microseconds())/float64(b.N), "self-cpu-us/msg")
	b.ReportMetric(float64(cpu.broker.Microseconds())/float64(b.N), "rabbit-cpu-us/msg")
}

// cpuSample is CPU time used so far by this process and by the RabbitMQ
// node it started (beam.smp processes descending from it).
type cpuSample struct{ self, broker time.Duration }

func (a cpuSample) sub(b cpuSample) cpuSample { return cpuSample{a.self - b.self, a.broker - b.broker} }

func sampleCPU() cpuSample {
	var s cpuSample
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	s.broker = descendantCPU(os.Getpid(), "beam.smp")
	return s
}

// descendantCPU sums utime+stime of the live processes named comm below
// pid, from /proc (clock ticks, assumed 100 Hz as on Linux x86-64).
func descendantCPU(pid int, comm string) time.Duration {
	ents, _ := os.ReadDir("/proc")
	type proc struct {
		ppid  int
		comm  string
		ticks int64
	}
	procs := map[int]proc{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// comm is in parentheses and may hold spaces: fields follow the last ')'.
		i := bytes.IndexByte(st, '(')
		j := bytes.LastIndexByte(st, ')')
		if i < 0 || j < i {
			continue
		}
		f := strings.Fields(string(st[j+1:]))
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		stime, _ := strconv.ParseInt(f[12], 10, 64)
		procs[p] = proc{ppid, string(st[i+1 : j]), ut + stime}
	}
	var total int64
	for _, pr := range procs {
		if pr.comm != comm {
			continue
		}
		for a := pr.ppid; a > 1; a = procs[a].ppid {
			if a == pid {
				total += pr.ticks
				break
			}
		}
	}
	return time.Duration(total) * 10 * time.Millisecond
}

// rssBytes is this process's resident set size.
func rssBytes() uint64 {
	st, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(st))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseUint(f[1], 10, 64)
	return pages * uint64(os.Getpagesize())
}

// counterSum sums the series of c whose label name has value.
func counterSum(c prometheus.Collector, name, value string) int {
	ch := make(chan prometheus.Metric, 64)
	go func() { c.Collect(ch); close(ch) }()
	total := 0.0
	for m := range ch {
		var pb dto.Metric
		if m.Write(&pb) != nil {
			continue
		}
		for _, l := range pb.GetLabel() {
			if l.GetName() == name && l.GetValue() == value {
				total += pb.GetCounter().GetValue()
			}
		}
	}
	return int(total)
}
