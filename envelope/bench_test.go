package envelope

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"strings"
	"sync"
	"testing"
	"time"
)

// Benchmarks share one RSA-4096 key, the size StudioML deployments use.
var (
	benchOnce sync.Once
	benchRSA  *MessagePrivateKey
)

func benchKey(b *testing.B) *MessagePrivateKey {
	benchOnce.Do(func() {
		var err error
		if benchRSA, err = GenerateMessageKey(4096); err != nil {
			panic(err)
		}
	})
	return benchRSA
}

// BenchmarkRawRSADecryptOAEP is the floor StudioML open cannot beat: one
// RSA-OAEP decryption with the same key.
func BenchmarkRawRSADecryptOAEP(b *testing.B) {
	k := benchKey(b)
	payload, _ := SealPayload(k.Public(), []byte(testRequest))
	wrapped, _ := decodeB64(strings.Split(payload, ",")[0])
	b.ResetTimer()
	for b.Loop() {
		if _, err := rsa.DecryptOAEP(sha256.New(), nil, k.k, wrapped, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpenStudioML(b *testing.B) {
	fixtures(b)
	k := benchKey(b)
	msg, _ := SealStudioML([]byte(testRequest), k.Public(), fixSign)
	o := testOpener(b)
	o.MessageKeys = []*MessagePrivateKey{k}
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := o.Open(ctx, "rmq_cpu_a", msg); err != nil {
			b.Fatal(err)
		}
	}
}

func benchHPKE(b *testing.B, s Suite) {
	fixtures(b)
	now := time.Now()
	msg, _ := SealHPKE([]byte(testRequest), hpkeKey(b, s).Public(), fixSign, SealHPKEOptions{Queue: "rmq_cpu_a", Now: now})
	o := hpkeOpener(b, now)
	o.Replay = nil // measure the cryptography; the replay store is the runner's
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if _, err := o.Open(ctx, "rmq_cpu_a", msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenHPKE is the default suite, ML-KEM-768+X25519.
func BenchmarkOpenHPKE(b *testing.B) { benchHPKE(b, SuiteHPKEHybrid) }

// BenchmarkOpenHPKEX25519 is the DHKEM(X25519) suite.
func BenchmarkOpenHPKEX25519(b *testing.B) { benchHPKE(b, SuiteHPKEX25519) }

// BenchmarkSealResponse is one report sealed for a response queue, as the
// runner seals each of its reports (a Progress report; RSA-2048 wrap of
// an AES-256-GCM payload, the key size of the runner's fixtures).
func BenchmarkSealResponse(b *testing.B) {
	fixtures(b)
	keys, err := NewPrefixMap(map[string]*MessagePublicKey{"rmq_": fixRSA.Public()})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	rep := &Report{Time: now, ExperimentID: "exp-1", UniqueID: "hpke-0123456789abcdef", ExecutorID: "runner-1",
		Progress: &Progress{Time: now, State: "SUCCESS", JSON: `{"status":"completed"}`}}
	for b.Loop() {
		if _, err := SealResponse(keys, "rmq_cpu_a", rep); err != nil {
			b.Fatal(err)
		}
	}
}
