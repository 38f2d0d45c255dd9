package envelope

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/nacl/secretbox"
)

func sealTest(t *testing.T, req string) []byte {
	t.Helper()
	fixtures(t)
	msg, err := SealStudioML([]byte(req), fixRSA.Public(), fixSign)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}

// rewrite decodes a wire message, lets f change the inner object, re-encodes.
func rewrite(t *testing.T, msg []byte, f func(m map[string]any)) []byte {
	t.Helper()
	var w map[string]map[string]any
	if err := json.Unmarshal(msg, &w); err != nil {
		t.Fatal(err)
	}
	f(w["message"])
	out, err := json.Marshal(w)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestStudioMLRoundTrip(t *testing.T) {
	msg := sealTest(t, testRequest)
	o := testOpener(t)
	got, err := o.Open(context.Background(), "rmq_cpu_alice_1", msg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if string(got.Request) != testRequest {
		t.Fatalf("request = %s", got.Request)
	}
	if got.Suite != SuiteStudioML || got.Prefix != "rmq_cpu_" || got.FingerprintMismatch {
		t.Fatalf("opened = %+v", got)
	}
	if got.Signer != fixSign.Public().Fingerprint() || !strings.HasPrefix(got.Signer, "SHA256:") {
		t.Fatalf("signer = %q", got.Signer)
	}
	// Advisory header copied from the request.
	var hdr map[string]string
	if err := json.Unmarshal(got.Studio.Experiment, &hdr); err != nil || hdr["status"] != "waiting" || hdr["pythonver"] != "3.9" {
		t.Fatalf("experiment header = %s (%v)", got.Studio.Experiment, err)
	}
	if got.Studio.ExperimentLifetime == nil || *got.Studio.ExperimentLifetime != "20m" {
		t.Fatalf("lifetime = %v", got.Studio.ExperimentLifetime)
	}
}

// The payload's byte layout is spec §2: OAEP of exactly 32 bytes, then a
// 24-byte nonce and a secretbox under that key.
func TestPayloadLayout(t *testing.T) {
	fixtures(t)
	payload, err := SealPayload(fixRSA.Public(), []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	kb, sb, _ := strings.Cut(payload, ",")
	wrapped, err := base64.StdEncoding.Strict().DecodeString(kb)
	if err != nil || len(wrapped) != 256 {
		t.Fatalf("K: %d bytes, %v", len(wrapped), err)
	}
	k, err := rsa.DecryptOAEP(sha256.New(), nil, fixRSA.k, wrapped, nil)
	if err != nil || len(k) != 32 {
		t.Fatalf("OAEP plaintext: %d bytes, %v", len(k), err)
	}
	box, _ := base64.StdEncoding.DecodeString(sb)
	var key [32]byte
	var nonce [24]byte
	copy(key[:], k)
	copy(nonce[:], box)
	plain, ok := secretbox.Open(nil, box[24:], &nonce, &key)
	if !ok || string(plain) != "hello" {
		t.Fatalf("secretbox: %q %v", plain, ok)
	}
	if len(box) != 24+secretbox.Overhead+5 {
		t.Fatalf("S is %d bytes", len(box))
	}
}

func TestSSHWireSignatureVerifies(t *testing.T) {
	msg := sealTest(t, testRequest)
	msg = rewrite(t, msg, func(m map[string]any) {
		sig, _ := base64.StdEncoding.DecodeString(m["signature"].(string))
		m["signature"] = base64.StdEncoding.EncodeToString(MarshalSSHSignature(sig))
	})
	if _, err := testOpener(t).Open(context.Background(), "rmq_cpu_a", msg); err != nil {
		t.Fatalf("SSH wire signature: %v", err)
	}
}

func TestFingerprintIsAdvisory(t *testing.T) {
	msg := rewrite(t, sealTest(t, testRequest), func(m map[string]any) {
		m["fingerprint"] = fixSign2.Public().Fingerprint()
	})
	got, err := testOpener(t).Open(context.Background(), "rmq_cpu_a", msg)
	if err != nil {
		t.Fatal(err)
	}
	if !got.FingerprintMismatch {
		t.Fatal("mismatching fingerprint not reported")
	}
}

func TestRotationKeepsPreviousKey(t *testing.T) {
	msg := sealTest(t, testRequest) // sealed to fixRSA
	o := testOpener(t)
	o.MessageKeys = []*MessagePrivateKey{fixRSA2, fixRSA}
	if _, err := o.Open(context.Background(), "rmq_cpu_a", msg); err != nil {
		t.Fatalf("previous key not used: %v", err)
	}
	o.MessageKeys = []*MessagePrivateKey{fixRSA2}
	_, err := o.Open(context.Background(), "rmq_cpu_a", msg)
	if !errors.Is(err, ErrDecrypt) {
		t.Fatalf("wrong key: err = %v, want ErrDecrypt", err)
	}
}

func TestStudioMLRejections(t *testing.T) {
	fixtures(t)
	good := sealTest(t, testRequest)
	payloadOf := func() string {
		var w studioWire
		json.Unmarshal(good, &w)
		return *w.Message.Payload
	}
	// signed builds a message whose payload is p, validly signed by fixSign.
	signed := func(p string) []byte {
		return rewrite(t, good, func(m map[string]any) {
			m["payload"] = p
			m["signature"] = base64.StdEncoding.EncodeToString(fixSign.Sign([]byte(p)))
		})
	}
	shortOAEP := func() string {
		k := make([]byte, 16) // a 16-byte "secretbox key"
		rand.Read(k)
		wrapped, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, fixRSA.Public().k, k, nil)
		_, s, _ := strings.Cut(payloadOf(), ",")
		return base64.StdEncoding.EncodeToString(wrapped) + "," + s
	}
	cases := []struct {
		name  string
		queue string
		body  []byte
		want  error
	}{
		{"tampered payload", "rmq_cpu_a", rewrite(t, good, func(m map[string]any) {
			p := []byte(m["payload"].(string))
			i := len(p) - 10
			p[i] ^= 'A' ^ 'B'
			if p[i] == ',' || p[i] == '=' {
				p[i] = 'Q'
			}
			m["payload"] = string(p)
		}), ErrBadSignature},
		{"tampered and re-signed by another key", "rmq_cpu_a", rewrite(t, good, func(m map[string]any) {
			m["signature"] = base64.StdEncoding.EncodeToString(fixSign2.Sign([]byte(m["payload"].(string))))
		}), ErrBadSignature},
		{"missing signature", "rmq_cpu_a", rewrite(t, good, func(m map[string]any) { delete(m, "signature") }), ErrBadSignature},
		{"signature not base64", "rmq_cpu_a", rewrite(t, good, func(m map[string]any) { m["signature"] = "%%%" }), ErrBadSignature},
		{"signature of wrong length", "rmq_cpu_a", rewrite(t, good, func(m map[string]any) { m["signature"] = "AAAA" }), ErrBadSignature},
		{"unknown prefix", "gpu_queue_1", good, ErrNoSigningKey},
		{"truncated base64", "rmq_cpu_a", signed(payloadOf()[:len(payloadOf())-3]), ErrMalformed},
		{"three commas", "rmq_cpu_a", signed(payloadOf() + ",AAAA,AAAA"), ErrMalformed},
		{"no comma", "rmq_cpu_a", signed(strings.Replace(payloadOf(), ",", "", 1)), ErrMalformed},
		{"unpadded base64", "rmq_cpu_a", signed(strings.TrimRight(payloadOf(), "=")), ErrMalformed},
		{"short OAEP plaintext", "rmq_cpu_a", signed(shortOAEP()), ErrDecrypt},
		{"secretbox too short", "rmq_cpu_a", signed(strings.Split(payloadOf(), ",")[0] + ",AAAA"), ErrMalformed},
		{"payload not a string", "rmq_cpu_a", rewrite(t, good, func(m map[string]any) { m["payload"] = 5 }), ErrMalformed},
		{"payload null", "rmq_cpu_a", rewrite(t, good, func(m map[string]any) { m["payload"] = nil }), ErrMalformed},
		{"non-JSON", "rmq_cpu_a", []byte("hello, world"), ErrMalformed},
		{"JSON array", "rmq_cpu_a", []byte(`[1,2]`), ErrMalformed},
		{"clear text", "rmq_cpu_a", []byte(testRequest), ErrClearTextRefused},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := testOpener(t).Open(context.Background(), c.queue, c.body)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if !Permanent(err) {
				t.Fatalf("%v should be permanent", err)
			}
			if strings.Contains(err.Error(), "PRIVATE") {
				t.Fatalf("error mentions key material: %v", err)
			}
		})
	}
}

func TestClearTextOptIn(t *testing.T) {
	o := testOpener(t)
	o.ClearText = []string{"rmq_dev_"}
	got, err := o.Open(context.Background(), "rmq_dev_x", []byte(testRequest))
	if err != nil || got.Suite != SuiteClearText || string(got.Request) != testRequest {
		t.Fatalf("clear text on opted-in queue: %v %+v", err, got)
	}
	if _, err := o.Open(context.Background(), "rmq_cpu_x", []byte(testRequest)); !errors.Is(err, ErrClearTextRefused) {
		t.Fatalf("other queue: %v", err)
	}
}

func TestOpenHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := testOpener(t).Open(ctx, "rmq_cpu_a", sealTest(t, testRequest))
	if !errors.Is(err, context.Canceled) || Permanent(err) {
		t.Fatalf("err = %v", err)
	}
}

func TestClassify(t *testing.T) {
	for body, want := range map[string]Suite{
		`{"message": {"payload": "x"}}`:    SuiteStudioML,
		`{"message": {"experiment": {}}}`:  SuiteClearText,
		`{"experiment": {}, "config": {}}`: SuiteClearText,
		`{"message": "payload"}`:           SuiteClearText,
	} {
		if got, err := Classify([]byte(body)); err != nil || got != want {
			t.Errorf("Classify(%s) = %v, %v; want %v", body, got, err, want)
		}
	}
	if _, err := Classify([]byte(`{"sealrun_hpke": {"header": "!!"}}`)); !errors.Is(err, ErrMalformed) {
		t.Errorf("bad HPKE header: %v", err)
	}
}

func TestSealResponse(t *testing.T) {
	fixtures(t)
	keys, _ := NewPrefixMap(map[string]*MessagePublicKey{"rmq_cpu_": fixRSA2.Public(), "rmq_cpu_alice_1_resp": fixRSA.Public()})
	text := "done"
	p, err := SealResponse(keys, "rmq_cpu_alice_1", &Report{ExperimentID: "e1", Text: &text})
	if err != nil {
		t.Fatal(err)
	}
	// Longest prefix of "rmq_cpu_alice_1_response" is the second key.
	plain, err := OpenPayload([]*MessagePrivateKey{fixRSA}, p)
	if err != nil {
		t.Fatalf("response not sealed to the longest-prefix key: %v", err)
	}
	var r map[string]any
	if err := json.Unmarshal(plain, &r); err != nil || r["experimentId"] != "e1" || r["text"] != "done" {
		t.Fatalf("report = %s", plain)
	}
	if _, err := SealResponse(keys, "gpu_1", &Report{Text: &text}); !errors.Is(err, ErrNoResponseKey) {
		t.Fatalf("no key: %v", err)
	}
	if _, err := SealResponse(keys, "rmq_cpu_1", &Report{}); err == nil {
		t.Fatal("empty report accepted")
	}
	if ResponseRoutingKey("q1") != "StudioML.q1_response" || ResponseRoutingKey("StudioML.q1") != "StudioML.q1_response" {
		t.Fatal("routing key")
	}
}
