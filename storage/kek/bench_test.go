package kek_test

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/kek"
	"github.com/sealrun/sealrun/storage/overlay"
)

// BenchmarkOverlayGet compares Get through the overlay over etcd with a DEK
// unwrapped by Transit against the same with a file master key, at the same
// concurrency. After start-up the DEK is in memory, so the ratio of ns/op
// file/transit should be ≈ 1 (target ≥ 0.9): Vault is not on the read path.
func BenchmarkOverlayGet(b *testing.B) {
	client := testenv.Etcd(b)
	_, tr := transitKey(b, "bench-kek")
	fileKey, err := overlay.LoadKeyFile(filepath.Join(b.TempDir(), "master.key"), true)
	if err != nil {
		b.Fatal(err)
	}
	fileRing, _ := overlay.NewKeyRing(fileKey)
	transitRing, err := kek.Ring(b.Context(), etcd.New(client, "/bench/deks/"), tr)
	if err != nil {
		b.Fatal(err)
	}
	value := make([]byte, 1024)
	for _, c := range []struct {
		name string
		ring *overlay.KeyRing
	}{{"file-key", fileRing}, {"transit-kek", transitRing}} {
		d := overlay.New(etcd.New(client, "/bench/"+c.name+"/"), c.ring, overlay.Pinning)
		for i := range 64 {
			if _, err := d.Put(b.Context(), fmt.Sprintf("k/%d", i), value, driver.PutOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		b.Run("Get/"+c.name, func(b *testing.B) {
			var n atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := d.Get(b.Context(), fmt.Sprintf("k/%d", n.Add(1)%64)); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
