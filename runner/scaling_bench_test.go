package runner

import (
	"fmt"
	"testing"
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
				benchRunnerWith(b, q, nil, false, c, p, func() []byte { return sealHPKE(b, q) })
			})
		}
	}
}
