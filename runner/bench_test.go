package runner

import (
	"crypto/rand"
	"runtime"
	"sync"
	"testing"
	"time"

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

// benchRunner runs bodies through a runner with a no-op executor and
// reports messages per second from first publish to last finished job.
func benchRunner(b *testing.B, q string, msgKey *envelope.MessagePrivateKey, memoryState bool, seal func() []byte) {
	// Enough messages in flight to keep every core and etcd's batching busy.
	benchRunnerWith(b, q, msgKey, memoryState, 64, 256, seal)
}

// benchRunnerWith is benchRunner with the consumer's concurrency and prefetch.
func benchRunnerWith(b *testing.B, q string, msgKey *envelope.MessagePrivateKey, memoryState bool, concurrency, prefetch int, seal func() []byte) {
	fixtures(b)
	bodies := make([][]byte, b.N)
	for i := range bodies {
		bodies[i] = seal()
	}
	h := newHarness(b, harnessOpt{queues: []string{q}, msgKey: msgKey, memoryState: memoryState, configure: func(c *Config) {
		c.Concurrency = concurrency
		c.AMQP.Prefetch = prefetch
		c.DeadLetter = nil
	}})
	b.ResetTimer()
	start := time.Now()
	// Publish concurrently with consumption, and wait for the publisher
	// before returning (its confirms outlive a short b.N=1 round).
	published := make(chan struct{})
	go func() { defer close(published); h.publish(q, bodies...) }()
	defer func() { <-published }()
	deadline := time.Now().Add(10 * time.Minute)
	for h.count(outcomeDone) < b.N {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d done", h.count(outcomeDone), b.N)
		}
		if n := h.count(outcomeRejected) + h.count(outcomeRequeued); n > 0 {
			b.Fatalf("%d messages rejected or requeued", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
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
	benchRunner(b, fixPrefix+"bench_studioml", k, false, func() []byte {
		m, err := envelope.SealStudioML([]byte(testRequest), k.Public(), fixSign)
		if err != nil {
			b.Fatal(err)
		}
		return m
	})
	b.ReportMetric(rate, "rsa4096-decrypts/s/core")
	b.ReportMetric(0.85*float64(runtime.NumCPU())*rate, "target-msgs/s")
}

func BenchmarkEndToEndHPKE(b *testing.B) {
	q := fixPrefix + "bench_hpke"
	benchRunner(b, q, nil, false, func() []byte { return sealHPKE(b, q) })
}

// BenchmarkEndToEndHPKEMemoryState is BenchmarkEndToEndHPKE with JobRecords
// in memory: the difference is what the two etcd transactions per message
// cost. Not a supported configuration (no duplicate check across runners).
func BenchmarkEndToEndHPKEMemoryState(b *testing.B) {
	q := fixPrefix + "bench_hpke_mem"
	benchRunner(b, q, nil, true, func() []byte { return sealHPKE(b, q) })
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
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
}
