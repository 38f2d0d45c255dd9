package runner

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkScaling is BenchmarkEndToEndHPKE (etcd JobRecords, no-op
// executor) with 1, 2 and 4 consumers (concurrency) and prefetch 1, 10 and
// 100, to show where throughput stops growing. Run with a fixed count:
//
//	go test -run XXX -bench Scaling -benchtime 1000x ./runner/
func BenchmarkScaling(b *testing.B) {
	for _, c := range []int{1, 2, 4} {
		for _, p := range []int{1, 10, 100} {
			b.Run(fmt.Sprintf("c=%d/p=%d", c, p), func(b *testing.B) {
				q := fmt.Sprintf("%sbench_scale_c%d_p%d", fixPrefix, c, p)
				benchScaling(b, q, c, p)
			})
		}
	}
}

func benchScaling(b *testing.B, q string, concurrency, prefetch int) {
	fixtures(b)
	bodies := make([][]byte, b.N)
	for i := range bodies {
		bodies[i] = sealHPKE(b, q)
	}
	h := newHarness(b, harnessOpt{queues: []string{q}, configure: func(c *Config) {
		c.Concurrency = concurrency
		c.AMQP.Prefetch = prefetch
		c.DeadLetter = nil
	}})
	b.ResetTimer()
	start := time.Now()
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
		time.Sleep(2 * time.Millisecond)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
}
