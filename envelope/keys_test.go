package envelope

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestPrivateKeysNeverPrint(t *testing.T) {
	fixtures(t)
	hk := hpkeKey(t, SuiteHPKEHybrid)
	hkBytes, _ := hk.k.Bytes()
	secrets := map[string][][]byte{
		"rsa":     {fixRSA.k.D.Bytes(), fixRSA.k.Primes[0].Bytes(), x509.MarshalPKCS1PrivateKey(fixRSA.k)},
		"signing": {fixSign.k.Seed()},
		"hpke":    {hkBytes},
	}
	values := map[string]any{"rsa": fixRSA, "signing": fixSign, "hpke": hk}
	for name, v := range values {
		var buf bytes.Buffer
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
			fmt.Fprintf(&buf, verb+"\n", v)
		}
		fmt.Fprintf(&buf, "%v\n", struct{ K any }{v})
		fmt.Fprintf(&buf, "%+v\n", []any{v})
		fmt.Fprintln(&buf, fmt.Errorf("wrapped: %v", v))
		slog.New(slog.NewJSONHandler(&buf, nil)).Info("key", "k", v)
		slog.New(slog.NewTextHandler(&buf, nil)).Info("key", "k", v)
		out := buf.String()
		if !strings.Contains(out, "redacted") {
			t.Errorf("%s: output does not say redacted:\n%s", name, out)
		}
		for _, s := range secrets[name] {
			for _, enc := range []string{fmt.Sprintf("%x", s), fmt.Sprintf("%X", s), string(s), fmt.Sprint(s)} {
				if len(enc) > 8 && strings.Contains(out, enc) {
					t.Errorf("%s: secret material printed:\n%s", name, out)
				}
			}
		}
	}
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found: run scripts/install-deps.sh", name)
	}
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// Key files made by the tools operators use (spec §4), each read with the
// passphrase file as operators write it: with and without `echo -n`.
func TestParseOperatorKeyFiles(t *testing.T) {
	dir := t.TempDir()
	const pw = "correct horse"
	// ssh-keygen -m PEM: legacy encrypted PEM, AES-128-CBC.
	run(t, "ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", pw, "-C", "", "-f", filepath.Join(dir, "legacy"))
	// ssh-keygen default: OpenSSH format, bcrypt KDF.
	run(t, "ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", pw, "-C", "", "-f", filepath.Join(dir, "openssh"))
	// openssl: encrypted PKCS#8 (PBES2, PBKDF2-HMAC-SHA256, AES-256-CBC).
	run(t, "openssl", "genpkey", "-quiet", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-aes-256-cbc", "-pass", "pass:"+pw, "-out", filepath.Join(dir, "pkcs8"))
	// openssl: encrypted PKCS#8 with the older PRF (HMAC-SHA1) and AES-128.
	run(t, "openssl", "pkcs8", "-topk8", "-v2", "aes-128-cbc", "-v2prf", "hmacWithSHA1", "-passin", "pass:"+pw, "-passout", "pass:"+pw,
		"-in", filepath.Join(dir, "pkcs8"), "-out", filepath.Join(dir, "pkcs8sha1"))

	for _, name := range []string{"legacy", "openssh", "pkcs8", "pkcs8sha1"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		for _, pass := range []string{pw, pw + "\n"} {
			k, err := ParseMessagePrivateKey(data, []byte(pass))
			if err != nil {
				t.Fatalf("%s with passphrase %q: %v", name, pass[len(pw):], err)
			}
			if k.Bits() != 2048 {
				t.Fatalf("%s: %d bits", name, k.Bits())
			}
		}
		_, err = ParseMessagePrivateKey(data, []byte("Zebra-9931"))
		if !errors.Is(err, ErrPassphrase) || strings.Contains(err.Error(), "Zebra") {
			t.Fatalf("%s wrong passphrase: %v", name, err)
		}
		if _, err := ParseMessagePrivateKey(data, nil); !errors.Is(err, ErrPassphrase) {
			t.Fatalf("%s no passphrase: %v", name, err)
		}
	}
	// Public key forms of one key agree.
	legacy, _ := os.ReadFile(filepath.Join(dir, "legacy"))
	k, _ := ParseMessagePrivateKey(legacy, []byte(pw))
	sshPub, _ := os.ReadFile(filepath.Join(dir, "legacy.pub"))
	spki, _ := x509.MarshalPKIXPublicKey(&k.k.PublicKey)
	for name, data := range map[string][]byte{
		"ssh-rsa": sshPub,
		"PKCS#1":  k.Public().MarshalPKCS1PEM(),
		"SPKI":    pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}),
	} {
		pub, err := ParseMessagePublicKey(data)
		if err != nil || !pub.Equal(k.Public()) {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

func TestMarshalEncryptedPEMIsLegacyFormat(t *testing.T) {
	fixtures(t)
	data, err := fixRSA.MarshalEncryptedPEM([]byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for _, want := range []string{"-----BEGIN RSA PRIVATE KEY-----", "Proc-Type: 4,ENCRYPTED", "DEK-Info: AES-128-CBC,"} {
		if !strings.Contains(s, want) {
			t.Fatalf("missing %q in\n%s", want, s[:200])
		}
	}
	k, err := ParseMessagePrivateKey(data, []byte("pw\n"))
	if err != nil || !k.Equal(fixRSA) {
		t.Fatalf("round trip: %v", err)
	}
	if _, err := fixRSA.MarshalEncryptedPEM(nil); err == nil {
		t.Fatal("empty passphrase accepted")
	}
	// ssh-keygen reads what we write (the tool operators check keys with).
	p := writeFile(t, t.TempDir(), "k.pem", data)
	run(t, "ssh-keygen", "-y", "-P", "pw", "-f", p)
}

func TestKeyOfWrongType(t *testing.T) {
	fixtures(t)
	dir := t.TempDir()
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "pw", "-C", "", "-f", filepath.Join(dir, "ed"))
	ed, _ := os.ReadFile(filepath.Join(dir, "ed"))
	if _, err := ParseMessagePrivateKey(ed, []byte("pw")); !errors.Is(err, ErrKeyType) {
		t.Fatalf("ed25519 as message key: %v", err)
	}
	edPub, _ := os.ReadFile(filepath.Join(dir, "ed.pub"))
	if _, err := ParseMessagePublicKey(edPub); !errors.Is(err, ErrKeyType) {
		t.Fatalf("ed25519 as RSA public key: %v", err)
	}
	// The same file works as a signing key.
	sk, err := ParseSigningPrivateKey(ed, []byte("pw"))
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ParseSigningPublicKey(edPub)
	if err != nil || !sp.Equal(sk.Public()) {
		t.Fatalf("signing pub: %v", err)
	}
	// RSA where Ed25519 is expected.
	rsaPEM, _ := fixRSA.MarshalEncryptedPEM([]byte("pw"))
	if _, err := ParseSigningPrivateKey(rsaPEM, []byte("pw")); !errors.Is(err, ErrKeyType) {
		t.Fatalf("RSA as signing key: %v", err)
	}
	sshRSA, _ := ssh.NewPublicKey(&fixRSA.k.PublicKey)
	if _, err := ParseSigningPublicKey(ssh.MarshalAuthorizedKey(sshRSA)); !errors.Is(err, ErrKeyType) {
		t.Fatalf("ssh-rsa as signing key: %v", err)
	}
	// A 1024-bit RSA key is refused.
	small, _ := rsa.GenerateKey(randReader{}, 1024)
	if _, err := NewMessagePrivateKey(small); !errors.Is(err, ErrKeyType) {
		t.Fatalf("1024-bit key: %v", err)
	}
	smallPub := pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&small.PublicKey)})
	if _, err := ParseMessagePublicKey(smallPub); !errors.Is(err, ErrKeyType) {
		t.Fatalf("1024-bit public key: %v", err)
	}
	// Garbage.
	for _, junk := range []string{"", "hello", "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"} {
		if _, err := ParseMessagePrivateKey([]byte(junk), []byte("pw")); !errors.Is(err, ErrMalformed) {
			t.Fatalf("junk %q: %v", junk, err)
		}
	}
}

func TestSigningKeyFormats(t *testing.T) {
	fixtures(t)
	line := fixSign.Public().AuthorizedKey() + " alice@lab"
	k, err := ParseSigningPublicKey([]byte(line + "\n"))
	if err != nil || !k.Equal(fixSign.Public()) || k.Comment() != "alice@lab" {
		t.Fatalf("parse: %v %q", err, k.Comment())
	}
	// OpenSSH private key, plain and encrypted, round-trips.
	for _, pw := range []string{"", "pw"} {
		data, err := fixSign.MarshalOpenSSH("c", []byte(pw))
		if err != nil {
			t.Fatal(err)
		}
		k2, err := ParseSigningPrivateKey(data, []byte(pw))
		if err != nil || !k2.Equal(fixSign) {
			t.Fatalf("openssh pw=%q: %v", pw, err)
		}
	}
	// ssh-keygen agrees with our fingerprint.
	dir := t.TempDir()
	p := writeFile(t, dir, "k.pub", []byte(line+"\n"))
	out, err := exec.Command("ssh-keygen", "-l", "-E", "sha256", "-f", p).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), fixSign.Public().Fingerprint()) {
		t.Fatalf("ssh-keygen says %s, we say %s", out, fixSign.Public().Fingerprint())
	}
	if _, err := NewSigningPublicKey(ed25519.PublicKey{1, 2}, ""); !errors.Is(err, ErrKeyType) {
		t.Fatal("short ed25519 key accepted")
	}
}

type randReader struct{}

func (randReader) Read(p []byte) (int, error) { return cryptoRandRead(p) }
