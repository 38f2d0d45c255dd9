package overlay_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/drivertest"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/memory"
	"github.com/sealrun/sealrun/storage/overlay"
)

// newKey returns a fresh key loaded the way production loads one: from a
// Custodia-format file created by autogen.
func newKey(t testing.TB) overlay.Key {
	t.Helper()
	k, err := overlay.LoadKeyFile(filepath.Join(t.TempDir(), "master.key"), true)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newOverlay(t testing.TB, under driver.Driver, prot overlay.Protection, keys ...overlay.Key) *overlay.Driver {
	t.Helper()
	if len(keys) == 0 {
		keys = []overlay.Key{newKey(t)}
	}
	ring, err := overlay.NewKeyRing(keys[0], keys[1:]...)
	if err != nil {
		t.Fatal(err)
	}
	return overlay.New(under, ring, prot)
}

func TestConformanceOverMemory(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) driver.Driver {
		d := newOverlay(t, memory.New(), overlay.Pinning)
		t.Cleanup(func() { _ = d.Close() })
		return d
	})
}

func TestConformanceOverEtcd(t *testing.T) {
	client := testenv.Etcd(t)
	n := 0
	drivertest.Run(t, func(t *testing.T) driver.Driver {
		n++
		return newOverlay(t, etcd.New(client, "/overlay/"+strings.Repeat("x", n)+"/"), overlay.Pinning)
	})
}

// segments splits a compact JWE and decodes its protected header.
func segments(t *testing.T, ct string) ([]string, map[string]any, string) {
	t.Helper()
	parts := strings.Split(ct, ".")
	if len(parts) != 5 {
		t.Fatalf("compact JWE has %d segments, want 5", len(parts))
	}
	raw, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	var hdr map[string]any
	if err := json.Unmarshal(raw, &hdr); err != nil {
		t.Fatal(err)
	}
	return parts, hdr, string(raw)
}

// TestStoredFormat checks what we write against custodia.md: five segments,
// an empty encrypted-key segment, a sorted compact protected header with the
// pin, plus our kid; and the master key file in Custodia's format.
func TestStoredFormat(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "master.key")
	key, err := overlay.LoadKeyFile(path, true)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode = %v, %v; want 0600", fi.Mode(), err)
	}
	file, _ := os.ReadFile(path)
	var jwk map[string]string
	if err := json.Unmarshal(file, &jwk); err != nil || len(jwk) != 2 || jwk["kty"] != "oct" || !strings.HasPrefix(string(file), `{"k":"`) {
		t.Fatalf("key file is not Custodia's {\"k\":...,\"kty\":\"oct\"} (%d members, err %v)", len(jwk), err)
	}
	if raw, err := base64.RawURLEncoding.DecodeString(jwk["k"]); err != nil || len(raw) != 64 {
		t.Fatalf("k is %d bytes, %v; want 64", len(raw), err)
	}

	mem := memory.New()
	d := newOverlay(t, mem, overlay.Pinning, key)
	if _, err := d.Put(t.Context(), "hosts/h1", []byte("s3cret"), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	e, _ := mem.Get(t.Context(), "hosts/h1")
	parts, _, hdr := segments(t, string(e.Value))
	if parts[1] != "" {
		t.Fatalf("encrypted key segment = %q, want empty (alg dir)", parts[1])
	}
	want := `{"alg":"dir","custodia.key":"keys/hosts/h1","enc":"A256CBC-HS512","kid":"` + key.ID + `"}`
	if hdr != want {
		t.Fatalf("protected header\n got %s\nwant %s", hdr, want)
	}
	if iv, _ := base64.RawURLEncoding.DecodeString(parts[2]); len(iv) != 16 {
		t.Fatalf("IV is %d bytes, want 16", len(iv))
	}
	if tag, _ := base64.RawURLEncoding.DecodeString(parts[4]); len(tag) != 32 {
		t.Fatalf("tag is %d bytes, want 32", len(tag))
	}
	if bytes.Contains(e.Value, []byte("s3cret")) {
		t.Fatal("plaintext visible in stored value")
	}
	// Decrypts independently with go-jose and the raw key from the file.
	raw, _ := base64.RawURLEncoding.DecodeString(jwk["k"])
	obj, err := jose.ParseEncryptedCompact(string(e.Value), []jose.KeyAlgorithm{jose.DIRECT}, []jose.ContentEncryption{jose.A256CBC_HS512})
	if err != nil {
		t.Fatal(err)
	}
	if plain, err := obj.Decrypt(raw); err != nil || string(plain) != "s3cret" {
		t.Fatalf("independent decrypt: %v", err)
	}

	// autogen never overwrites.
	again, err := overlay.LoadKeyFile(path, true)
	if err != nil || again.ID != key.ID {
		t.Fatalf("second autogen load: id %q, %v; want the same key %q", again.ID, err, key.ID)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, file) {
		t.Fatal("autogen rewrote an existing key file")
	}
}

// custodiaValue builds a value the way custodia.md documents Custodia
// writing it, independently of the overlay: go-jose, no kid, pin header.
func custodiaValue(t *testing.T, key []byte, name, value string, pin bool) string {
	t.Helper()
	opts := &jose.EncrypterOptions{}
	if pin {
		opts = opts.WithHeader("custodia.key", "keys/"+name)
	}
	enc, err := jose.NewEncrypter(jose.A256CBC_HS512, jose.Recipient{Algorithm: jose.DIRECT, Key: key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := enc.Encrypt([]byte(value))
	if err != nil {
		t.Fatal(err)
	}
	s, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeCustodiaKey writes a key file exactly as Custodia does and loads it.
func writeCustodiaKey(t *testing.T, raw []byte) overlay.Key {
	t.Helper()
	path := filepath.Join(t.TempDir(), "custodia.key")
	data := `{"k":"` + base64.RawURLEncoding.EncodeToString(raw) + `","kty":"oct"}`
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := overlay.LoadKeyFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	if !k.Legacy {
		t.Fatal("a key file without kid must be the legacy key")
	}
	return k
}

func TestReadsCustodiaValues(t *testing.T) {
	raw := bytes.Repeat([]byte{7}, 64)
	key := writeCustodiaKey(t, raw)
	mem := memory.New()
	if _, err := mem.Put(t.Context(), "hosts/h1", []byte(custodiaValue(t, raw, "hosts/h1", "pw1", true)), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	d := newOverlay(t, mem, overlay.Pinning, key)
	e, err := d.Get(t.Context(), "hosts/h1")
	if err != nil || string(e.Value) != "pw1" {
		t.Fatalf("Get Custodia value: %v", err)
	}
}

// TestCustodiaFixture opens a key file and value produced by Custodia 0.6.0
// itself (see testdata/README).
func TestCustodiaFixture(t *testing.T) {
	key, err := overlay.LoadKeyFile("testdata/custodia.key", false)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := os.ReadFile("testdata/custodia-value.jwe")
	if err != nil {
		t.Fatal(err)
	}
	name := "keys/fixture/secret"
	d := newOverlay(t, memory.New(), overlay.Pinning, key)
	plain, pinned, err := d.Open(strings.TrimPrefix(name, "keys/"), strings.TrimSpace(string(ct)))
	if err != nil || !pinned || string(plain) != "custodia-plaintext" {
		t.Fatalf("open Custodia fixture: pinned=%v err=%v", pinned, err)
	}
}

func TestProtectionModes(t *testing.T) {
	raw := bytes.Repeat([]byte{9}, 64)
	key := writeCustodiaKey(t, raw)
	unpinned := custodiaValue(t, raw, "legacy/a", "old", false)
	for _, tc := range []struct {
		prot    overlay.Protection
		wantErr bool
		pinned  bool // after the read
	}{
		{overlay.Pinning, true, false},
		{overlay.Migrate, false, true},
		{overlay.Encrypt, false, false},
	} {
		mem := memory.New()
		if _, err := mem.Put(t.Context(), "legacy/a", []byte(unpinned), driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		d := newOverlay(t, mem, tc.prot, key)
		e, err := d.Get(t.Context(), "legacy/a")
		if tc.wantErr {
			if d.ErrorCode(err) != driver.Integrity || !strings.Contains(err.Error(), "migrate") {
				t.Fatalf("mode %d: got %v, want an Integrity error suggesting migrate", tc.prot, err)
			}
			t.Logf("pinning mode, unpinned value: user sees: %v", err)
		} else if err != nil || string(e.Value) != "old" {
			t.Fatalf("mode %d: Get = %v", tc.prot, err)
		}
		stored, _ := mem.Get(t.Context(), "legacy/a")
		_, hdr, _ := segments(t, string(stored.Value))
		if _, has := hdr["custodia.key"]; has != tc.pinned {
			t.Fatalf("mode %d: stored value pinned = %v, want %v", tc.prot, has, tc.pinned)
		}
	}
}

// TestErrors shows the error a user sees for each failure and that the
// original value is still readable afterwards.
func TestErrors(t *testing.T) {
	key, other := newKey(t), newKey(t)
	mem := memory.New()
	d := newOverlay(t, mem, overlay.Pinning, key)
	const secret = "top-secret-value"
	if _, err := d.Put(t.Context(), "a", []byte(secret), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	orig, _ := mem.Get(t.Context(), "a")
	stillReadable := func() {
		t.Helper()
		if e, err := d.Get(t.Context(), "a"); err != nil || string(e.Value) != secret {
			t.Fatalf("original value lost: %v", err)
		}
	}
	check := func(what string, err error, mustName ...string) {
		t.Helper()
		if d.ErrorCode(err) != driver.Integrity {
			t.Fatalf("%s: got %v (code %v), want Integrity", what, err, d.ErrorCode(err))
		}
		for _, s := range mustName {
			if !strings.Contains(err.Error(), s) {
				t.Fatalf("%s: error %q does not name %q", what, err, s)
			}
		}
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("%s: error leaks the secret", what)
		}
		t.Logf("%s: user sees: %v", what, err)
	}

	// Swapped: a's ciphertext copied under b.
	if _, err := mem.Put(t.Context(), "b", orig.Value, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := d.Get(t.Context(), "b")
	check("swapped ciphertext", err, "pinned to another name")

	// Tampered: one bit flipped in the ciphertext segment.
	parts := strings.Split(string(orig.Value), ".")
	ctb, _ := base64.RawURLEncoding.DecodeString(parts[3])
	ctb[0] ^= 1
	parts[3] = base64.RawURLEncoding.EncodeToString(ctb)
	if _, err := mem.Put(t.Context(), "tampered", []byte(strings.Join(parts, ".")), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = d.Get(t.Context(), "tampered")
	check("tampered ciphertext", err, key.ID)

	// Wrong key: a ring without the sealing key names the missing id.
	wrong := newOverlay(t, mem, overlay.Pinning, other)
	_, err = wrong.Get(t.Context(), "a")
	check("missing key", err, key.ID, other.ID)

	// Same kid, different bytes (a replaced key file): authentication fails.
	impostor, _ := overlay.NewKey(key.ID, bytes.Repeat([]byte{1}, 64))
	_, err = newOverlay(t, mem, overlay.Pinning, impostor).Get(t.Context(), "a")
	check("wrong key bytes", err, key.ID, "authentication failed")

	// Garbage.
	_, _, err = d.Open("a", "not-a-jwe")
	check("garbage", err)

	// Empty values are refused up front.
	if _, err := d.Put(t.Context(), "a", nil, driver.PutOptions{}); d.ErrorCode(err) != driver.InvalidValue {
		t.Fatalf("empty value: %v, want InvalidValue", err)
	}
	stillReadable()
}

// TestRotation: values sealed under an old key still open once a new key is
// current, and new writes carry the new kid.
func TestRotation(t *testing.T) {
	// The old key is a Custodia file (legacy, no kid); the new one has a kid.
	oldKey := newKey(t)
	newK, err := overlay.NewKey("2025-rotation", bytes.Repeat([]byte{5}, 64))
	if err != nil {
		t.Fatal(err)
	}
	mem := memory.New()
	if _, err := newOverlay(t, mem, overlay.Pinning, oldKey).Put(t.Context(), "r", []byte("v1"), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	d := newOverlay(t, mem, overlay.Pinning, newK, oldKey)
	if e, err := d.Get(t.Context(), "r"); err != nil || string(e.Value) != "v1" {
		t.Fatalf("read old value after rotation: %v", err)
	}
	if _, err := d.Put(t.Context(), "r2", []byte("v2"), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	e, _ := mem.Get(t.Context(), "r2")
	if _, hdr, _ := segments(t, string(e.Value)); hdr["kid"] != newK.ID {
		t.Fatalf("new write kid = %v, want %q", hdr["kid"], newK.ID)
	}
}

func TestKeyFileErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := overlay.LoadKeyFile(filepath.Join(dir, "absent"), false); err == nil || !strings.Contains(err.Error(), "autogen") {
		t.Fatalf("absent key without autogen: %v", err)
	}
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte(`{"k":"`+base64.RawURLEncoding.EncodeToString(make([]byte, 32))+`","kty":"oct"}`), 0o600)
	if _, err := overlay.LoadKeyFile(short, false); err == nil || !strings.Contains(err.Error(), "64") {
		t.Fatalf("32-byte key: %v", err)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte(`{"k":"c2VjcmV0LWJ5dGVz","kty":"oct"`), 0o600)
	_, err := overlay.LoadKeyFile(bad, false)
	if err == nil || strings.Contains(err.Error(), "c2VjcmV0") {
		t.Fatalf("malformed key file: %v (must not quote the key)", err)
	}
	if _, err := overlay.ParseProtection("none"); err == nil {
		t.Fatal("unknown protection accepted")
	}
}

// FuzzOpen feeds arbitrary stored values to the decrypter: it must never
// panic, and anything it accepts must have been sealed for that name.
func FuzzOpen(f *testing.F) {
	key, err := overlay.NewKey("fuzz", bytes.Repeat([]byte{3}, 64))
	if err != nil {
		f.Fatal(err)
	}
	ring, _ := overlay.NewKeyRing(key)
	d := overlay.New(memory.New(), ring, overlay.Migrate)
	good, _ := d.Seal("n", []byte("plain"))
	f.Add(good)
	f.Add(strings.Replace(good, ".", "..", 1))
	f.Add(good[:len(good)-3])
	f.Add("a.b.c.d.e")
	f.Add("....")
	f.Add("eyJhbGciOiJub25lIn0..AAAA.AAAA.AAAA")
	f.Add("")
	f.Fuzz(func(t *testing.T, ct string) {
		plain, _, err := d.Open("n", ct)
		if err == nil && string(plain) != "plain" && ct != good {
			// Only ciphertexts made with the key can open; any other success
			// would mean the allow-lists or authentication are broken.
			if _, _, err2 := d.Open("other", ct); err2 == nil {
				t.Fatalf("unpinned forged value opened under two names")
			}
		}
	})
}
