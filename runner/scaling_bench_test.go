package runner

import (
	"fmt"
	"testing"
)

// BenchmarkScaling is BenchmarkEndToEndHPKE (etcd JobRecords, no-op
// executor, responses consumed) with 1, 2 and 4 consumers — Runner
// instances on the same queue, each with its own connection and JobRecord
// batching — and prefetch 1, 10 and 100 per consumer, as the reliability
// issue asks. Each consumer runs as many messages at once as its prefetch
// lets in, so messages in flight are consumers × prefetch. Per-message
// latency is I/O (etcd fsyncs, publisher confirms), so throughput grows with
// the messages in flight until the 2 cores are busy. Run with a fixed count:
//
//	go test -run XXX -bench Scaling -benchtime 1000x ./runner/
func BenchmarkScaling(b *testing.B) {
	for _, c := range []int{1, 2, 4} {
		for _, p := range []int{1, 10, 100} {
			b.Run(fmt.Sprintf("c=%d/p=%d", c, p), func(b *testing.B) {
				q := fmt.Sprintf("%sbench_scale_c%d_p%d", fixPrefix, c, p)
				benchRunner(b, q, benchOpt{runners: c, concurrency: p, prefetch: p}, func() []byte { return sealHPKE(b, q) })
			})
		}
	}
}
