package envelope

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

// Suite names a message format. The HPKE suites fix KEM, KDF and AEAD
// together so a header cannot mix-and-match primitives.
type Suite string

const (
	SuiteStudioML   Suite = "studioml"            // RSA-OAEP-SHA256 + NaCl secretbox
	SuiteHPKEHybrid Suite = "hpke-mlkem768x25519" // ML-KEM-768+X25519, HKDF-SHA256, ChaCha20-Poly1305
	SuiteHPKEX25519 Suite = "hpke-x25519"         // DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305
	SuiteClearText  Suite = "clear-text"          // an unencrypted Request
)

// hpkeInfo separates sealrun's HPKE contexts from any other use of the keys.
var hpkeInfo = []byte("sealrun hpke v1")

// hpkeSigContext prefixes what the sender signs, so an HPKE signature can
// never be taken for a StudioML one (which signs a bare payload string).
const hpkeSigContext = "sealrun-hpke-v1\x00"

const hpkeVersion = 1

func (s Suite) kem() (hpke.KEM, bool) {
	switch s {
	case SuiteHPKEHybrid:
		return hpke.MLKEM768X25519(), true
	case SuiteHPKEX25519:
		return hpke.DHKEM(ecdh.X25519()), true
	}
	return nil, false
}

func suiteOfKEM(id uint16) Suite {
	for _, s := range []Suite{SuiteHPKEHybrid, SuiteHPKEX25519} {
		if k, _ := s.kem(); k.ID() == id {
			return s
		}
	}
	return Suite(fmt.Sprintf("hpke-kem-0x%04x", id))
}

// ParseSuite accepts an HPKE suite name; "hpke" means the default hybrid.
func ParseSuite(name string) (Suite, error) {
	switch Suite(name) {
	case "hpke", SuiteHPKEHybrid:
		return SuiteHPKEHybrid, nil
	case SuiteHPKEX25519:
		return SuiteHPKEX25519, nil
	case SuiteStudioML:
		return SuiteStudioML, nil
	}
	return "", fmt.Errorf("unknown suite %q (want studioml, hpke, %s or %s)", name, SuiteHPKEHybrid, SuiteHPKEX25519)
}

func keyID(s Suite, pub []byte) string {
	h := sha256.New()
	h.Write([]byte(s))
	h.Write([]byte{0})
	h.Write(pub)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// GenerateHPKEKey makes a key pair for an HPKE suite.
func GenerateHPKEKey(s Suite) (*HPKEPrivateKey, error) {
	kem, ok := s.kem()
	if !ok {
		return nil, fmt.Errorf("%q is not an HPKE suite", s)
	}
	k, err := kem.GenerateKey()
	if err != nil {
		return nil, err
	}
	return &HPKEPrivateKey{k: k, kid: keyID(s, k.PublicKey().Bytes())}, nil
}

const (
	pemHPKEPrivate = "SEALRUN HPKE PRIVATE KEY"
	pemHPKEPublic  = "SEALRUN HPKE PUBLIC KEY"
)

// MarshalPEM writes the private key as a typed PEM block naming its suite and
// key id; store it only in the secret backend or a 0600 file.
func (p *HPKEPrivateKey) MarshalPEM() ([]byte, error) {
	b, err := p.k.Bytes()
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemHPKEPrivate, Headers: map[string]string{"Suite": string(p.Suite()), "Key-Id": p.kid}, Bytes: b}), nil
}

// MarshalPEM writes the public key as a typed PEM block.
func (p *HPKEPublicKey) MarshalPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemHPKEPublic, Headers: map[string]string{"Suite": string(p.Suite()), "Key-Id": p.kid}, Bytes: p.k.Bytes()})
}

func decodeHPKEPEM(data []byte, typ string) (Suite, hpke.KEM, []byte, string, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return "", nil, nil, "", reject(ErrMalformed, "HPKE key file holds no PEM block")
	}
	if block.Type != typ {
		return "", nil, nil, "", reject(ErrKeyType, "PEM block %q, want %q", block.Type, typ)
	}
	s := Suite(block.Headers["Suite"])
	kem, ok := s.kem()
	if !ok {
		return "", nil, nil, "", reject(ErrKeyType, "HPKE key names unknown suite %q", s)
	}
	return s, kem, block.Bytes, block.Headers["Key-Id"], nil
}

// IsHPKEPrivateKeyPEM reports whether data is a sealrun HPKE private key file.
func IsHPKEPrivateKeyPEM(data []byte) bool {
	block, _ := pem.Decode(data)
	return block != nil && block.Type == pemHPKEPrivate
}

// ParseHPKEPrivateKey reads a key written by MarshalPEM.
func ParseHPKEPrivateKey(data []byte) (*HPKEPrivateKey, error) {
	s, kem, b, kid, err := decodeHPKEPEM(data, pemHPKEPrivate)
	if err != nil {
		return nil, err
	}
	k, err := kem.NewPrivateKey(b)
	if err != nil {
		return nil, reject(ErrMalformed, "HPKE private key: %v", err)
	}
	want := keyID(s, k.PublicKey().Bytes())
	if kid != want {
		return nil, reject(ErrMalformed, "HPKE private key's Key-Id %q does not match its key (%s)", kid, want)
	}
	return &HPKEPrivateKey{k: k, kid: kid}, nil
}

// ParseHPKEPublicKey reads a key written by MarshalPEM.
func ParseHPKEPublicKey(data []byte) (*HPKEPublicKey, error) {
	s, kem, b, kid, err := decodeHPKEPEM(data, pemHPKEPublic)
	if err != nil {
		return nil, err
	}
	k, err := kem.NewPublicKey(b)
	if err != nil {
		return nil, reject(ErrMalformed, "HPKE public key: %v", err)
	}
	if want := keyID(s, b); kid != want {
		return nil, reject(ErrMalformed, "HPKE public key's Key-Id %q does not match its key (%s)", kid, want)
	}
	return &HPKEPublicKey{k: k, kid: kid}, nil
}

// HPKEHeader is authenticated twice: it is the AEAD's associated data and it
// is covered by the sender's signature.
type HPKEHeader struct {
	Version int    `json:"v"`
	Suite   Suite  `json:"suite"`
	KeyID   string `json:"kid"`
	Queue   string `json:"queue"`
	ID      string `json:"id"`
	Created int64  `json:"created"` // Unix milliseconds
	Signer  string `json:"signer"`  // advisory SHA256 fingerprint
}

// hpkeWire is the body: {"sealrun_hpke": {...}}. The header travels as the
// exact bytes that were signed, base64url-encoded.
type hpkeWire struct {
	Msg *hpkeFields `json:"sealrun_hpke"`
}

// SealHPKEOptions are the per-message fields of the signed header.
type SealHPKEOptions struct {
	Queue string    // required: the queue the message is published to
	ID    string    // message id; random when empty
	Now   time.Time // creation time; time.Now when zero
}

// SealHPKE encrypts request to pub and signs the header and ciphertext.
func SealHPKE(request []byte, pub *HPKEPublicKey, signer *SigningPrivateKey, o SealHPKEOptions) ([]byte, error) {
	if pub == nil || signer == nil {
		return nil, errors.New("sealing needs a public key and a signing key")
	}
	if o.Queue == "" {
		return nil, fmt.Errorf("HPKE messages are bound to a queue: give the queue name")
	}
	if o.ID == "" {
		var b [16]byte
		rand.Read(b[:])
		o.ID = hex.EncodeToString(b[:])
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	hdr, err := json.Marshal(HPKEHeader{Version: hpkeVersion, Suite: pub.Suite(), KeyID: pub.kid, Queue: o.Queue,
		ID: o.ID, Created: o.Now.UnixMilli(), Signer: signer.Public().Fingerprint()})
	if err != nil {
		return nil, err
	}
	enc, sender, err := hpke.NewSender(pub.k, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), hpkeInfo)
	if err != nil {
		return nil, err
	}
	ct, err := sender.Seal(hdr, request)
	if err != nil {
		return nil, err
	}
	b64 := base64.RawURLEncoding
	var w hpkeWire
	w.Msg = &hpkeFields{Header: b64.EncodeToString(hdr), Enc: b64.EncodeToString(enc), CT: b64.EncodeToString(ct)}
	w.Msg.Sig = b64.EncodeToString(signer.Sign(hpkeSigned(w.Msg.Header, w.Msg.Enc, w.Msg.CT)))
	return json.Marshal(w)
}

func hpkeSigned(hdr, enc, ct string) []byte {
	var b bytes.Buffer
	b.Grow(len(hpkeSigContext) + len(hdr) + len(enc) + len(ct) + 2)
	b.WriteString(hpkeSigContext)
	b.WriteString(hdr)
	b.WriteByte('.')
	b.WriteString(enc)
	b.WriteByte('.')
	b.WriteString(ct)
	return b.Bytes()
}
