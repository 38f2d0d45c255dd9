package envelope

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"time"

	"golang.org/x/crypto/nacl/secretbox"
	"golang.org/x/crypto/ssh"
)

const (
	secretboxKeySize   = 32
	secretboxNonceSize = 24
)

// SealPayload encrypts plaintext to pub in the StudioML hybrid format
// (spec §2): B64(RSA-OAEP-SHA256(k)) "," B64(nonce || secretbox(k, nonce, m)).
// Responses (spec §5) use the same format.
func SealPayload(pub *MessagePublicKey, plaintext []byte) (string, error) {
	var k [secretboxKeySize]byte
	var nonce [secretboxNonceSize]byte
	if _, err := io.ReadFull(rand.Reader, k[:]); err != nil {
		return "", err
	}
	if _, err := io.ReadFull(rand.Reader, nonce[:]); err != nil {
		return "", err
	}
	wrapped, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub.k, k[:], nil)
	if err != nil {
		return "", err
	}
	box := secretbox.Seal(nonce[:], plaintext, &nonce, &k)
	b64 := base64.StdEncoding
	return b64.EncodeToString(wrapped) + "," + b64.EncodeToString(box), nil
}

// OpenPayload decrypts a StudioML payload string with one of keys (the
// current key first; older keys stay for in-flight messages after a rotation).
func OpenPayload(keys []*MessagePrivateKey, payload string) ([]byte, error) {
	if strings.Count(payload, ",") != 1 {
		return nil, reject(ErrMalformed, "payload must be two base64 fields joined by exactly one comma, found %d commas", strings.Count(payload, ","))
	}
	kPart, sPart, _ := strings.Cut(payload, ",")
	b64 := base64.StdEncoding.Strict()
	wrapped, err := b64.DecodeString(kPart)
	if err != nil {
		return nil, reject(ErrMalformed, "payload key field is not padded standard base64")
	}
	box, err := b64.DecodeString(sPart)
	if err != nil {
		return nil, reject(ErrMalformed, "payload data field is not padded standard base64")
	}
	if len(box) < secretboxNonceSize+secretbox.Overhead {
		return nil, reject(ErrMalformed, "payload data field is %d bytes, shorter than nonce and tag", len(box))
	}
	if len(keys) == 0 {
		return nil, reject(ErrDecrypt, "no message private key is loaded")
	}
	var nonce [secretboxNonceSize]byte
	copy(nonce[:], box)
	for _, key := range keys {
		if len(wrapped) != key.k.Size() {
			continue
		}
		k, err := rsa.DecryptOAEP(sha256.New(), nil, key.k, wrapped, nil)
		if err != nil {
			continue
		}
		if len(k) != secretboxKeySize {
			return nil, reject(ErrDecrypt, "OAEP plaintext is %d bytes, want a %d-byte secretbox key", len(k), secretboxKeySize)
		}
		var sk [secretboxKeySize]byte
		copy(sk[:], k)
		clear(k)
		out, ok := secretbox.Open(nil, box[secretboxNonceSize:], &nonce, &sk)
		clear(sk[:])
		if !ok {
			return nil, reject(ErrDecrypt, "secretbox authentication failed (tampered data or mismatched key)")
		}
		return out, nil
	}
	return nil, reject(ErrDecrypt, "RSA-OAEP unwrap failed with every loaded key (%d); the message was sealed to another key or tampered", len(keys))
}

// decodeSignature accepts both encodings of spec §3: base64 of the raw 64
// bytes, or base64 of the SSH wire form string("ssh-ed25519") || string(sig).
func decodeSignature(s string) ([]byte, error) {
	if s == "" {
		return nil, reject(ErrBadSignature, "message has no signature")
	}
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, reject(ErrBadSignature, "signature is not base64")
	}
	if len(raw) == ed25519.SignatureSize {
		return raw, nil
	}
	var wire struct {
		Format string
		Blob   []byte
		Rest   []byte `ssh:"rest"`
	}
	if err := ssh.Unmarshal(raw, &wire); err != nil || len(wire.Rest) != 0 {
		return nil, reject(ErrBadSignature, "signature is neither 64 raw bytes nor an SSH signature")
	}
	if wire.Format != ssh.KeyAlgoED25519 || len(wire.Blob) != ed25519.SignatureSize {
		return nil, reject(ErrBadSignature, "SSH signature is %q, want ssh-ed25519", wire.Format)
	}
	return wire.Blob, nil
}

// MarshalSSHSignature is the SSH wire form 2020 (paramiko) clients sent.
func MarshalSSHSignature(sig []byte) []byte {
	return ssh.Marshal(struct {
		Format string
		Blob   []byte
	}{ssh.KeyAlgoED25519, sig})
}

// StudioMessage is the inner object of a StudioML wire message (spec §1).
// Only payload, signature and fingerprint are authenticated; the other
// fields are advisory copies of the request.
type StudioMessage struct {
	Experiment         json.RawMessage `json:"experiment,omitempty"`
	TimeAdded          float64         `json:"time_added,omitempty"`
	ExperimentLifetime *string         `json:"experiment_lifetime"`
	ResourcesNeeded    json.RawMessage `json:"resources_needed,omitempty"`
	Payload            *string         `json:"payload"`
	Signature          string          `json:"signature,omitempty"`
	Fingerprint        string          `json:"fingerprint,omitempty"`
}

type studioWire struct {
	Message *StudioMessage `json:"message"`
}

// SealStudioML builds the wire message the StudioML client publishes: the
// request is encrypted to pub and the payload signed by signer. The advisory
// header fields are copied from the request when present.
func SealStudioML(request []byte, pub *MessagePublicKey, signer *SigningPrivateKey) ([]byte, error) {
	if pub == nil || signer == nil {
		return nil, errors.New("sealing needs a public key and a signing key")
	}
	var req struct {
		Experiment struct {
			Status          json.RawMessage `json:"status"`
			PythonVer       json.RawMessage `json:"pythonver"`
			TimeAdded       float64         `json:"time_added"`
			ResourcesNeeded json.RawMessage `json:"resources_needed"`
		} `json:"experiment"`
		Config struct {
			Lifetime *string `json:"experimentLifetime"`
		} `json:"config"`
	}
	if err := json.Unmarshal(request, &req); err != nil {
		return nil, reject(ErrMalformed, "request is not a JSON object: %v", err)
	}
	payload, err := SealPayload(pub, request)
	if err != nil {
		return nil, err
	}
	sig := signer.Sign([]byte(payload))
	hdr := map[string]json.RawMessage{}
	if req.Experiment.Status != nil {
		hdr["status"] = req.Experiment.Status
	}
	if req.Experiment.PythonVer != nil {
		hdr["pythonver"] = req.Experiment.PythonVer
	}
	exp, _ := json.Marshal(hdr)
	added := req.Experiment.TimeAdded
	if added == 0 {
		added = float64(time.Now().UnixMicro()) / 1e6
	}
	m := StudioMessage{
		Experiment:         exp,
		TimeAdded:          added,
		ExperimentLifetime: req.Config.Lifetime,
		ResourcesNeeded:    req.Experiment.ResourcesNeeded,
		Payload:            &payload,
		Signature:          base64.StdEncoding.EncodeToString(sig),
		Fingerprint:        signer.Public().Fingerprint(),
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(studioWire{Message: &m}); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

func decodeB64(s string) ([]byte, error) { return base64.StdEncoding.Strict().DecodeString(s) }
