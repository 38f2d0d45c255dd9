package overlay_test

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
)

// BenchmarkEtcd compares the overlay over etcd with the plain etcd driver at
// the same concurrency (b.RunParallel, GOMAXPROCS goroutines): the ratio of
// ns/op plain/overlay is the cost of encryption (target ≥ 0.8).
func BenchmarkEtcd(b *testing.B) {
	client := testenv.Etcd(b)
	value := make([]byte, 1024)
	drivers := []struct {
		name string
		d    driver.Driver
	}{
		{"plain", etcd.New(client, "/bench/plain/")},
		{"overlay", newOverlay(b, etcd.New(client, "/bench/overlay/"), 0)},
	}
	for _, dr := range drivers {
		for i := range 64 {
			if _, err := dr.d.Put(b.Context(), fmt.Sprintf("k/%d", i), value, driver.PutOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		b.Run("Get/"+dr.name, func(b *testing.B) {
			var n atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := dr.d.Get(b.Context(), fmt.Sprintf("k/%d", n.Add(1)%64)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
		b.Run("Put/"+dr.name, func(b *testing.B) {
			var n atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := dr.d.Put(b.Context(), fmt.Sprintf("k/%d", n.Add(1)%64), value, driver.PutOptions{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
