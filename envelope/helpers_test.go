package envelope

import (
	"sync"
	"testing"
)

// Test keys are generated once per test binary: RSA generation is slow.
var (
	fixOnce  sync.Once
	fixRSA   *MessagePrivateKey
	fixRSA2  *MessagePrivateKey
	fixSign  *SigningPrivateKey
	fixSign2 *SigningPrivateKey
)

func fixtures(t testing.TB) {
	t.Helper()
	fixOnce.Do(func() {
		var err error
		if fixRSA, err = GenerateMessageKey(2048); err != nil {
			panic(err)
		}
		if fixRSA2, err = GenerateMessageKey(2048); err != nil {
			panic(err)
		}
		if fixSign, err = GenerateSigningKey(); err != nil {
			panic(err)
		}
		if fixSign2, err = GenerateSigningKey(); err != nil {
			panic(err)
		}
	})
}

// testOpener opens messages signed by fixSign for queues starting "rmq_cpu_".
func testOpener(t testing.TB) *Opener {
	t.Helper()
	fixtures(t)
	sk, err := NewPrefixMap(map[string]SigningPublicKey{"rmq_cpu_": fixSign.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return &Opener{MessageKeys: []*MessagePrivateKey{fixRSA}, SigningKeys: sk}
}

const testRequest = `{"experiment": {"key": "exp-1", "status": "waiting", "pythonver": "3.9"}, "config": {"experimentLifetime": "20m"}}`
