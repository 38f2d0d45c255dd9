package envelope

import (
	"crypto/ed25519"
	"crypto/hpke"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"log/slog"

	"golang.org/x/crypto/ssh"
)

// Each key role has its own type (as Tailscale's types/key) so a signing key
// cannot be passed where a message key is expected. Private key types print
// only their public identity: String, GoString, every fmt verb and slog all
// go through describe, never through the key material.

// MessagePrivateKey is the RSA private key that unwraps StudioML payloads.
type MessagePrivateKey struct{ k *rsa.PrivateKey }

// MessagePublicKey is the RSA public key clients seal payloads (and the
// runner seals responses) to.
type MessagePublicKey struct{ k *rsa.PublicKey }

// SigningPrivateKey is an Ed25519 key a client signs payloads with.
type SigningPrivateKey struct{ k ed25519.PrivateKey }

// SigningPublicKey is an Ed25519 public key, as an `ssh-ed25519` line.
type SigningPublicKey struct {
	k       ed25519.PublicKey
	comment string
}

// HPKEPrivateKey is a KEM private key of the modern suite with its key id.
type HPKEPrivateKey struct {
	k   hpke.PrivateKey
	kid string
}

// HPKEPublicKey is a KEM public key of the modern suite with its key id.
type HPKEPublicKey struct {
	k   hpke.PublicKey
	kid string
}

// NewMessagePrivateKey wraps an RSA key, refusing keys under 2048 bits.
func NewMessagePrivateKey(k *rsa.PrivateKey) (*MessagePrivateKey, error) {
	if k == nil || k.N.BitLen() < 2048 {
		return nil, reject(ErrKeyType, "RSA message key must have at least 2048 bits")
	}
	k.Precompute()
	return &MessagePrivateKey{k: k}, nil
}

// NewMessagePublicKey wraps an RSA public key, refusing keys under 2048 bits.
func NewMessagePublicKey(k *rsa.PublicKey) (*MessagePublicKey, error) {
	if k == nil || k.N.BitLen() < 2048 {
		return nil, reject(ErrKeyType, "RSA public key must have at least 2048 bits")
	}
	return &MessagePublicKey{k: k}, nil
}

// NewSigningPrivateKey wraps an Ed25519 private key.
func NewSigningPrivateKey(k ed25519.PrivateKey) (*SigningPrivateKey, error) {
	if len(k) != ed25519.PrivateKeySize {
		return nil, reject(ErrKeyType, "Ed25519 private key must be %d bytes", ed25519.PrivateKeySize)
	}
	return &SigningPrivateKey{k: k}, nil
}

// NewSigningPublicKey wraps an Ed25519 public key with an optional comment.
func NewSigningPublicKey(k ed25519.PublicKey, comment string) (SigningPublicKey, error) {
	if len(k) != ed25519.PublicKeySize {
		return SigningPublicKey{}, reject(ErrKeyType, "Ed25519 public key must be %d bytes", ed25519.PublicKeySize)
	}
	return SigningPublicKey{k: k, comment: comment}, nil
}

// Public returns the public half.
func (p *MessagePrivateKey) Public() *MessagePublicKey { return &MessagePublicKey{k: &p.k.PublicKey} }

// Bits is the modulus size.
func (p *MessagePrivateKey) Bits() int { return p.k.N.BitLen() }

// Fingerprint identifies the key pair: SHA256 of the PKIX public key.
func (p *MessagePrivateKey) Fingerprint() string { return p.Public().Fingerprint() }

// Equal reports, in constant time, whether both hold the same private key.
func (p *MessagePrivateKey) Equal(o *MessagePrivateKey) bool {
	if p == nil || o == nil {
		return p == o
	}
	a, b := x509.MarshalPKCS1PrivateKey(p.k), x509.MarshalPKCS1PrivateKey(o.k)
	return subtle.ConstantTimeCompare(a, b) == 1
}

// Bits is the modulus size.
func (p *MessagePublicKey) Bits() int { return p.k.N.BitLen() }

// Fingerprint is "SHA256:" and the unpadded base64 of sha256(PKIX DER).
func (p *MessagePublicKey) Fingerprint() string {
	der, err := x509.MarshalPKIXPublicKey(p.k)
	if err != nil { // cannot happen for a valid RSA key
		return "SHA256:?"
	}
	sum := sha256.Sum256(der)
	return "SHA256:" + base64.RawStdEncoding.EncodeToString(sum[:])
}

// MarshalPKCS1PEM returns the `RSA PUBLIC KEY` PEM StudioML clients load.
func (p *MessagePublicKey) MarshalPKCS1PEM() []byte {
	return pemEncode("RSA PUBLIC KEY", x509.MarshalPKCS1PublicKey(p.k))
}

// Equal reports whether both are the same public key.
func (p *MessagePublicKey) Equal(o *MessagePublicKey) bool {
	return p != nil && o != nil && p.k.Equal(o.k)
}

func (p *MessagePublicKey) String() string {
	return fmt.Sprintf("rsa-%d %s", p.Bits(), p.Fingerprint())
}

// Public returns the public half.
func (p *SigningPrivateKey) Public() SigningPublicKey {
	return SigningPublicKey{k: p.k.Public().(ed25519.PublicKey)}
}

// Sign signs msg with pure Ed25519.
func (p *SigningPrivateKey) Sign(msg []byte) []byte { return ed25519.Sign(p.k, msg) }

// Equal reports, in constant time, whether both hold the same private key.
func (p *SigningPrivateKey) Equal(o *SigningPrivateKey) bool {
	return p != nil && o != nil && subtle.ConstantTimeCompare(p.k, o.k) == 1
}

// Verify checks a raw 64-byte Ed25519 signature over msg.
func (k SigningPublicKey) Verify(msg, sig []byte) bool {
	return len(k.k) == ed25519.PublicKeySize && ed25519.Verify(k.k, msg, sig)
}

// IsZero reports whether k holds no key.
func (k SigningPublicKey) IsZero() bool { return len(k.k) == 0 }

// Equal reports whether both are the same key (comments are ignored).
func (k SigningPublicKey) Equal(o SigningPublicKey) bool { return k.k.Equal(o.k) }

// Comment is the free text after the key in an authorized_keys line.
func (k SigningPublicKey) Comment() string { return k.comment }

func (k SigningPublicKey) sshKey() ssh.PublicKey {
	pk, err := ssh.NewPublicKey(k.k)
	if err != nil {
		panic("envelope: invalid ed25519 key") // guarded by constructors
	}
	return pk
}

// Fingerprint is `ssh-keygen -l -E sha256` of the key: "SHA256:<b64>".
func (k SigningPublicKey) Fingerprint() string {
	if k.IsZero() {
		return ""
	}
	return ssh.FingerprintSHA256(k.sshKey())
}

// AuthorizedKey is the `ssh-ed25519 AAAA... comment` line, without newline.
func (k SigningPublicKey) AuthorizedKey() string {
	line := string(ssh.MarshalAuthorizedKey(k.sshKey()))
	line = line[:len(line)-1]
	if k.comment != "" {
		line += " " + k.comment
	}
	return line
}

func (k SigningPublicKey) String() string {
	if k.IsZero() {
		return "ssh-ed25519 <none>"
	}
	return "ssh-ed25519 " + k.Fingerprint()
}

// KeyID names the key in HPKE headers.
func (p *HPKEPrivateKey) KeyID() string { return p.kid }

// Suite is the KEM this key belongs to.
func (p *HPKEPrivateKey) Suite() Suite { return suiteOfKEM(p.k.KEM().ID()) }

// Public returns the public half.
func (p *HPKEPrivateKey) Public() *HPKEPublicKey {
	return &HPKEPublicKey{k: p.k.PublicKey(), kid: p.kid}
}

// KeyID names the key in HPKE headers.
func (p *HPKEPublicKey) KeyID() string { return p.kid }

// Suite is the KEM this key belongs to.
func (p *HPKEPublicKey) Suite() Suite { return suiteOfKEM(p.k.KEM().ID()) }

func (p *HPKEPublicKey) String() string { return fmt.Sprintf("hpke %s kid=%s", p.Suite(), p.kid) }

// Redaction: these methods are the only way the private types reach text.

func (p *MessagePrivateKey) describe() string {
	if p == nil || p.k == nil {
		return "MessagePrivateKey(<nil>)"
	}
	return fmt.Sprintf("MessagePrivateKey(rsa-%d %s, private part redacted)", p.Bits(), p.Fingerprint())
}

func (p *SigningPrivateKey) describe() string {
	if p == nil || p.k == nil {
		return "SigningPrivateKey(<nil>)"
	}
	return fmt.Sprintf("SigningPrivateKey(ssh-ed25519 %s, private part redacted)", p.Public().Fingerprint())
}

func (p *HPKEPrivateKey) describe() string {
	if p == nil || p.k == nil {
		return "HPKEPrivateKey(<nil>)"
	}
	return fmt.Sprintf("HPKEPrivateKey(%s kid=%s, private part redacted)", p.Suite(), p.kid)
}

func (p *MessagePrivateKey) String() string               { return p.describe() }
func (p *MessagePrivateKey) GoString() string             { return p.describe() }
func (p *MessagePrivateKey) Format(f fmt.State, _ rune)   { fmt.Fprint(f, p.describe()) }
func (p *MessagePrivateKey) LogValue() slog.Value         { return slog.StringValue(p.describe()) }
func (p *MessagePrivateKey) MarshalText() ([]byte, error) { return []byte(p.describe()), nil }
func (p *SigningPrivateKey) String() string               { return p.describe() }
func (p *SigningPrivateKey) GoString() string             { return p.describe() }
func (p *SigningPrivateKey) Format(f fmt.State, _ rune)   { fmt.Fprint(f, p.describe()) }
func (p *SigningPrivateKey) LogValue() slog.Value         { return slog.StringValue(p.describe()) }
func (p *SigningPrivateKey) MarshalText() ([]byte, error) { return []byte(p.describe()), nil }
func (p *HPKEPrivateKey) String() string                  { return p.describe() }
func (p *HPKEPrivateKey) GoString() string                { return p.describe() }
func (p *HPKEPrivateKey) Format(f fmt.State, _ rune)      { fmt.Fprint(f, p.describe()) }
func (p *HPKEPrivateKey) LogValue() slog.Value            { return slog.StringValue(p.describe()) }
func (p *HPKEPrivateKey) MarshalText() ([]byte, error)    { return []byte(p.describe()), nil }
