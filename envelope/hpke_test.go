package envelope

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	hpkeOnce sync.Once
	hpkeKeys = map[Suite]*HPKEPrivateKey{}
)

func hpkeKey(t testing.TB, s Suite) *HPKEPrivateKey {
	fixtures(t)
	hpkeOnce.Do(func() {
		for _, s := range []Suite{SuiteHPKEHybrid, SuiteHPKEX25519} {
			k, err := GenerateHPKEKey(s)
			if err != nil {
				panic(err)
			}
			hpkeKeys[s] = k
		}
	})
	return hpkeKeys[s]
}

func hpkeOpener(t testing.TB, now time.Time) *Opener {
	o := testOpener(t)
	o.HPKEKeys = []*HPKEPrivateKey{hpkeKey(t, SuiteHPKEHybrid), hpkeKey(t, SuiteHPKEX25519)}
	o.Replay = &MemoryReplayGuard{Now: func() time.Time { return now }}
	o.Now = func() time.Time { return now }
	return o
}

func TestHPKERoundTrip(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	for _, s := range []Suite{SuiteHPKEHybrid, SuiteHPKEX25519} {
		t.Run(string(s), func(t *testing.T) {
			msg, err := SealHPKE([]byte(testRequest), hpkeKey(t, s).Public(), fixSign, SealHPKEOptions{Queue: "rmq_cpu_a", ID: "m1", Now: now})
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := Classify(msg); got != s {
				t.Fatalf("Classify = %v", got)
			}
			o := hpkeOpener(t, now.Add(time.Second))
			got, err := o.Open(context.Background(), "rmq_cpu_a", msg)
			if err != nil {
				t.Fatal(err)
			}
			if string(got.Request) != testRequest || got.Suite != s || got.HPKE.ID != "m1" || got.HPKE.Queue != "rmq_cpu_a" {
				t.Fatalf("opened %+v", got)
			}
			// The same message again is a replay.
			if _, err := o.Open(context.Background(), "rmq_cpu_a", msg); !errors.Is(err, ErrReplay) {
				t.Fatalf("replay: %v", err)
			}
		})
	}
}

func TestHPKERejections(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	pub := hpkeKey(t, SuiteHPKEHybrid).Public()
	seal := func(o SealHPKEOptions) []byte {
		if o.Queue == "" {
			o.Queue = "rmq_cpu_a"
		}
		if o.Now.IsZero() {
			o.Now = now
		}
		m, err := SealHPKE([]byte(testRequest), pub, fixSign, o)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	// edit changes one field of the envelope, keeping the original signature.
	edit := func(msg []byte, field string, f func([]byte) []byte) []byte {
		var w map[string]map[string]string
		json.Unmarshal(msg, &w)
		b, _ := base64.RawURLEncoding.DecodeString(w["sealrun_hpke"][field])
		w["sealrun_hpke"][field] = base64.RawURLEncoding.EncodeToString(f(b))
		out, _ := json.Marshal(w)
		return out
	}
	flip := func(b []byte) []byte { b[len(b)/2] ^= 1; return b }
	good := seal(SealHPKEOptions{})
	otherSigner, _ := SealHPKE([]byte(testRequest), pub, fixSign2, SealHPKEOptions{Queue: "rmq_cpu_a", Now: now})
	otherKey, _ := SealHPKE([]byte(testRequest), hpkeKey(t, SuiteHPKEX25519).Public(), fixSign, SealHPKEOptions{Queue: "rmq_cpu_a", Now: now})
	cases := []struct {
		name  string
		queue string
		body  []byte
		o     func(*Opener)
		want  error
	}{
		{"tampered ciphertext", "rmq_cpu_a", edit(good, "ct", flip), nil, ErrBadSignature},
		{"tampered enc", "rmq_cpu_a", edit(good, "enc", flip), nil, ErrBadSignature},
		{"tampered header", "rmq_cpu_a", edit(good, "header", func(b []byte) []byte {
			return []byte(strings.Replace(string(b), `"id":"`, `"id":"x`, 1))
		}), nil, ErrBadSignature},
		{"no signature", "rmq_cpu_a", edit(good, "sig", func([]byte) []byte { return nil }), nil, ErrBadSignature},
		{"wrong signer", "rmq_cpu_a", otherSigner, nil, ErrBadSignature},
		{"re-targeted to another queue", "rmq_cpu_b", good, nil, ErrWrongQueue},
		{"no signing key", "gpu_x", seal(SealHPKEOptions{Queue: "gpu_x"}), nil, ErrNoSigningKey},
		{"expired", "rmq_cpu_a", seal(SealHPKEOptions{Now: now.Add(-time.Hour)}), nil, ErrReplay},
		{"from the future", "rmq_cpu_a", seal(SealHPKEOptions{Now: now.Add(time.Hour)}), nil, ErrReplay},
		{"unknown key id", "rmq_cpu_a", good, func(o *Opener) { o.HPKEKeys = o.HPKEKeys[1:] }, ErrUnknownKey},
		{"decrypts only with its own key", "rmq_cpu_a", otherKey, func(o *Opener) { o.HPKEKeys = o.HPKEKeys[:1] }, ErrUnknownKey},
		{"header not base64", "rmq_cpu_a", []byte(`{"sealrun_hpke":{"header":"***","enc":"","ct":"","sig":""}}`), nil, ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := hpkeOpener(t, now)
			if c.o != nil {
				c.o(o)
			}
			_, err := o.Open(context.Background(), c.queue, c.body)
			if !errors.Is(err, c.want) || !Permanent(err) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
		})
	}
}

type failingGuard struct{}

func (failingGuard) Record(context.Context, string, string, time.Time) error {
	return errors.New("etcd: connection refused")
}

func TestHPKEReplayStoreDownIsTransient(t *testing.T) {
	now := time.Now()
	msg, _ := SealHPKE([]byte(testRequest), hpkeKey(t, SuiteHPKEHybrid).Public(), fixSign, SealHPKEOptions{Queue: "rmq_cpu_a", Now: now})
	o := hpkeOpener(t, now)
	o.Replay = failingGuard{}
	_, err := o.Open(context.Background(), "rmq_cpu_a", msg)
	if err == nil || Permanent(err) {
		t.Fatalf("err = %v, want a transient error", err)
	}
}

func TestHPKEKeyPEM(t *testing.T) {
	k := hpkeKey(t, SuiteHPKEHybrid)
	priv, err := k.MarshalPEM()
	if err != nil {
		t.Fatal(err)
	}
	k2, err := ParseHPKEPrivateKey(priv)
	if err != nil || k2.KeyID() != k.KeyID() || k2.Suite() != SuiteHPKEHybrid {
		t.Fatalf("private round trip: %v", err)
	}
	pub, err := ParseHPKEPublicKey(k.Public().MarshalPEM())
	if err != nil || pub.KeyID() != k.KeyID() {
		t.Fatalf("public round trip: %v", err)
	}
	// A key whose Key-Id header was edited is refused.
	bad := strings.Replace(string(priv), k.KeyID(), "0000000000000000", 1)
	if _, err := ParseHPKEPrivateKey([]byte(bad)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("edited kid: %v", err)
	}
	// A public key cannot be parsed as a private key, and vice versa.
	if _, err := ParseHPKEPrivateKey(k.Public().MarshalPEM()); !errors.Is(err, ErrKeyType) {
		t.Fatalf("public as private: %v", err)
	}
	if _, err := ParseHPKEPublicKey(priv); !errors.Is(err, ErrKeyType) {
		t.Fatalf("private as public: %v", err)
	}
}

func TestMemoryReplayGuardConcurrent(t *testing.T) {
	g := &MemoryReplayGuard{}
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if g.Record(context.Background(), "q", "same", time.Now().Add(time.Minute)) == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("%d concurrent records succeeded, want 1", ok)
	}
}
