package audit

import (
	"context"
	"path/filepath"
	"testing"
)

// BenchmarkLogParallel: durable audit lines per second with concurrent
// writers sharing fsyncs.
func BenchmarkLogParallel(b *testing.B) {
	l, err := Open(filepath.Join(b.TempDir(), "audit.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := l.Log(context.Background(), Entry{Credential: "runner-1", Verb: "GET", Path: "/secrets/sealrun/signing-key/rmq_cpu_", Status: 200, Outcome: "allowed"}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
