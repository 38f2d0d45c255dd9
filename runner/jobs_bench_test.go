package runner

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkJobsClaimFinish is the etcd part of a message alone: a claim and
// a finish per message, 64 at a time, on embedded etcd.
func BenchmarkJobsClaimFinish(b *testing.B) {
	j := &Jobs{Store: etcdStateStore(b)}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range 64 {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				id := fmt.Sprintf("m%d", i)
				now := time.Now()
				_, c, err := j.Claim(b.Context(), "q", id, now)
				if err != nil {
					b.Error(err)
					return
				}
				if err := finishJob(b.Context(), c, 0); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
