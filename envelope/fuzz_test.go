package envelope

import (
	"context"
	"errors"
	"testing"
	"time"
)

// Every parser of untrusted input has a fuzz target. Their seeds run as
// ordinary tests; `make fuzz` runs each with -fuzz for a bounded time.
// Properties: no panic, every rejection wraps a sentinel, and anything that
// opens must be authentic (only our fixtures can produce it).

func FuzzOpen(f *testing.F) {
	fixtures(f)
	now := time.Unix(1_800_000_000, 0)
	studio, _ := SealStudioML([]byte(testRequest), fixRSA.Public(), fixSign)
	hp, _ := SealHPKE([]byte(testRequest), hpkeKey(f, SuiteHPKEX25519).Public(), fixSign, SealHPKEOptions{Queue: "rmq_cpu_a", ID: "1", Now: now})
	for _, s := range [][]byte{studio, hp, []byte(testRequest), []byte(`{"message":{"payload":"a,b","signature":"AAAA"}}`),
		[]byte(`{"sealrun_hpke":{"header":"e30","enc":"","ct":"","sig":""}}`), []byte("null"), []byte(`{"message":null}`)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		o := hpkeOpener(t, now)
		o.ClearText = []string{"rmq_dev_"}
		for _, q := range []string{"rmq_cpu_a", "rmq_dev_a"} {
			m, err := o.Open(context.Background(), q, body)
			if err != nil {
				if !Permanent(err) {
					t.Fatalf("non-sentinel rejection: %v", err)
				}
				continue
			}
			if m.Suite != SuiteClearText && string(m.Request) != testRequest {
				t.Fatalf("opened a forged message: %q", m.Request)
			}
		}
	})
}

func FuzzOpenPayload(f *testing.F) {
	fixtures(f)
	p, _ := SealPayload(fixRSA.Public(), []byte("x"))
	for _, s := range []string{p, "", ",", "a,b", "AAAA,AAAA", p + ",", p[:len(p)/2]} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		out, err := OpenPayload([]*MessagePrivateKey{fixRSA}, payload)
		if err == nil && payload != p && string(out) != "x" {
			t.Fatalf("forged payload opened: %q", out)
		}
		if err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrDecrypt) {
			t.Fatalf("unexpected error class: %v", err)
		}
	})
}

func FuzzParseKeys(f *testing.F) {
	fixtures(f)
	legacy, _ := fixRSA.MarshalEncryptedPEM([]byte("pw"))
	sshKey, _ := fixSign.MarshalOpenSSH("", nil)
	hk, _ := hpkeKey(f, SuiteHPKEX25519).MarshalPEM()
	for _, s := range [][]byte{legacy, sshKey, hk, fixRSA.Public().MarshalPKCS1PEM(), hpkeKey(f, SuiteHPKEX25519).Public().MarshalPEM(),
		[]byte(fixSign.Public().AuthorizedKey()), []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n")} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// None may panic; results are discarded.
		ParseMessagePrivateKey(data, []byte("pw"))
		ParseSigningPrivateKey(data, []byte("pw"))
		ParseMessagePublicKey(data)
		ParseSigningPublicKey(data)
		ParseHPKEPrivateKey(data)
		ParseHPKEPublicKey(data)
		decryptPKCS8(data, []byte("pw"))
	})
}

func FuzzDecodeSignature(f *testing.F) {
	fixtures(f)
	sig := fixSign.Sign([]byte("x"))
	f.Add(string(MarshalSSHSignature(sig)))
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		if raw, err := decodeSignature(s); err == nil && len(raw) != 64 {
			t.Fatalf("decoded a %d-byte signature", len(raw))
		}
	})
}
