package envelope

import (
	"bytes"
	"context"
	"crypto/hpke"
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"
)

// Default replay window for the HPKE suite.
const (
	DefaultWindow  = 15 * time.Minute
	DefaultMaxSkew = 2 * time.Minute
)

// Opener verifies and decrypts messages taken from a queue. Its fields are
// read-only once Open is in use; to change keys, build a new Opener and swap
// it in atomically (keeping previous keys in the slices for in-flight work).
type Opener struct {
	MessageKeys []*MessagePrivateKey // RSA keys, current first
	HPKEKeys    []*HPKEPrivateKey    // HPKE keys, any order (selected by kid)
	SigningKeys *SigningKeys         // queue prefix → Ed25519 key
	// ClearText lists queue prefixes on which unencrypted requests are
	// accepted. Empty (the default) refuses clear text everywhere.
	ClearText []string
	// Replay records HPKE message ids; nil means only the window is checked.
	Replay  ReplayGuard
	Window  time.Duration // HPKE messages older than this are refused
	MaxSkew time.Duration // how far in the future a creation time may be
	Now     func() time.Time
	// Known, when set, is asked about a verified HPKE message created
	// before the window: true means the caller already holds a record of
	// this message id (a redelivery of work it claimed), so the window —
	// which refuses replays of messages it cannot tell apart — does not
	// apply. Replay of a known id is the caller's to refuse.
	Known func(ctx context.Context, id string) bool
}

// Opened is a message that passed every check.
type Opened struct {
	Suite   Suite
	Request []byte // the Request JSON
	// Prefix is the queue prefix whose signing key verified the message.
	Prefix string
	Signer string // fingerprint of the verifying key
	// FingerprintMismatch: the message's advisory fingerprint names another
	// key than the one that verified it (spec §3: log it, verification decides).
	FingerprintMismatch bool
	Studio              *StudioMessage // StudioML header fields
	HPKE                *HPKEHeader    // HPKE header
}

// wireProbe decodes just enough of any body to classify it, once; the
// suites' own fields are decoded lazily from the raw parts.
type wireProbe struct {
	HPKE    *hpkeFields     `json:"sealrun_hpke"`
	Message json.RawMessage `json:"message"`
}

type hpkeFields struct {
	Header string `json:"header"`
	Enc    string `json:"enc"`
	CT     string `json:"ct"`
	Sig    string `json:"sig"`
}

// parsedHPKE is an HPKE envelope whose header has been decoded.
type parsedHPKE struct {
	f      *hpkeFields
	hdr    []byte
	header HPKEHeader
}

func classify(body []byte) (Suite, *StudioMessage, *parsedHPKE, error) {
	var p wireProbe
	if err := json.Unmarshal(body, &p); err != nil {
		if bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")) && json.Valid(body) {
			// A JSON object whose known keys have other types: clear text
			// if "message" is not an object, malformed otherwise.
			var m map[string]json.RawMessage
			json.Unmarshal(body, &m)
			if _, ok := m["sealrun_hpke"]; ok {
				return "", nil, nil, reject(ErrMalformed, "sealrun_hpke is not an object of strings")
			}
			return SuiteClearText, nil, nil, nil
		}
		return "", nil, nil, reject(ErrMalformed, "body is not a JSON object")
	}
	if p.HPKE != nil {
		hdr, err := base64.RawURLEncoding.Strict().DecodeString(p.HPKE.Header)
		if err != nil {
			return "", nil, nil, reject(ErrMalformed, "HPKE header is not unpadded base64url")
		}
		h := &parsedHPKE{f: p.HPKE, hdr: hdr}
		dec := json.NewDecoder(bytes.NewReader(hdr))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&h.header); err != nil || h.header.Version != hpkeVersion || h.header.ID == "" {
			return "", nil, nil, reject(ErrMalformed, "HPKE header is not a version %d header with an id", hpkeVersion)
		}
		if _, ok := h.header.Suite.kem(); !ok {
			return "", nil, nil, reject(ErrMalformed, "HPKE header names unknown suite %q", h.header.Suite)
		}
		return h.header.Suite, nil, h, nil
	}
	if len(p.Message) > 0 && p.Message[0] == '{' {
		var probe struct {
			Payload json.RawMessage `json:"payload"`
		}
		if json.Unmarshal(p.Message, &probe) == nil && probe.Payload != nil {
			var m StudioMessage
			if err := json.Unmarshal(p.Message, &m); err != nil || m.Payload == nil {
				return "", nil, nil, reject(ErrMalformed, "StudioML envelope: payload is not a string")
			}
			return SuiteStudioML, &m, nil, nil
		}
	}
	if bytes.Equal(bytes.TrimSpace(body), []byte("null")) {
		return "", nil, nil, reject(ErrMalformed, "body is not a JSON object")
	}
	return SuiteClearText, nil, nil, nil
}

// Classify tells the suites apart from the body alone (spec §1, §7).
func Classify(body []byte) (Suite, error) {
	s, _, _, err := classify(body)
	return s, err
}

// Open verifies and decrypts body, a message taken from queue. Errors wrap
// the sentinels of this package; see Permanent.
func (o *Opener) Open(ctx context.Context, queue string, body []byte) (*Opened, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	suite, studio, hp, err := classify(body)
	if err != nil {
		return nil, err
	}
	switch suite {
	case SuiteStudioML:
		return o.openStudioML(queue, studio)
	case SuiteClearText:
		return o.openClearText(queue, body)
	default:
		return o.openHPKE(ctx, queue, hp)
	}
}

func (o *Opener) signingKey(queue string) (string, SigningPublicKey, error) {
	prefix, key, ok := o.SigningKeys.Lookup(queue)
	if !ok {
		return "", key, reject(ErrNoSigningKey, "queue %q: no signing key is bound to a prefix of it", queue)
	}
	return prefix, key, nil
}

func (o *Opener) openStudioML(queue string, m *StudioMessage) (*Opened, error) {
	// Verify before decrypting (spec §3).
	prefix, key, err := o.signingKey(queue)
	if err != nil {
		return nil, err
	}
	sig, err := decodeSignature(m.Signature)
	if err != nil {
		return nil, err
	}
	if !key.Verify([]byte(*m.Payload), sig) {
		return nil, reject(ErrBadSignature, "queue %q: signature does not verify with the key for prefix %q (%s)", queue, prefix, key.Fingerprint())
	}
	req, err := OpenPayload(o.MessageKeys, *m.Payload)
	if err != nil {
		return nil, err
	}
	if !json.Valid(req) {
		return nil, reject(ErrMalformed, "decrypted request is not JSON")
	}
	fp := key.Fingerprint()
	return &Opened{Suite: SuiteStudioML, Request: req, Prefix: prefix, Signer: fp,
		FingerprintMismatch: m.Fingerprint != "" && m.Fingerprint != fp, Studio: m}, nil
}

func (o *Opener) openClearText(queue string, body []byte) (*Opened, error) {
	allowed := false
	for _, p := range o.ClearText {
		if p != "" && strings.HasPrefix(queue, p) {
			allowed = true
			break
		}
	}
	if !allowed {
		return nil, reject(ErrClearTextRefused, "queue %q does not accept clear-text requests", queue)
	}
	if !bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")) {
		return nil, reject(ErrMalformed, "clear-text request is not a JSON object")
	}
	return &Opened{Suite: SuiteClearText, Request: body}, nil
}

func (o *Opener) openHPKE(ctx context.Context, queue string, p *parsedHPKE) (*Opened, error) {
	b64 := base64.RawURLEncoding.Strict()
	enc, err1 := b64.DecodeString(p.f.Enc)
	ct, err2 := b64.DecodeString(p.f.CT)
	sig, err3 := b64.DecodeString(p.f.Sig)
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, reject(ErrMalformed, "HPKE envelope field is not unpadded base64url")
	}
	h, hdrBytes := p.header, p.hdr
	if h.Queue != queue {
		return nil, reject(ErrWrongQueue, "message was sealed for queue %q, taken from %q", h.Queue, queue)
	}
	prefix, key, err := o.signingKey(queue)
	if err != nil {
		return nil, err
	}
	if len(sig) == 0 {
		return nil, reject(ErrBadSignature, "message has no signature")
	}
	if !key.Verify(hpkeSigned(p.f.Header, p.f.Enc, p.f.CT), sig) {
		return nil, reject(ErrBadSignature, "queue %q: signature does not verify with the key for prefix %q (%s)", queue, prefix, key.Fingerprint())
	}
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	window, skew := o.Window, o.MaxSkew
	if window <= 0 {
		window = DefaultWindow
	}
	if skew <= 0 {
		skew = DefaultMaxSkew
	}
	created := time.UnixMilli(h.Created)
	age := now().Sub(created)
	if age > window && (o.Known == nil || !o.Known(ctx, h.ID)) {
		return nil, reject(ErrReplay, "message %s was created %s ago, outside the %s window", h.ID, age.Round(time.Second), window)
	}
	if -age > skew {
		return nil, reject(ErrReplay, "message %s was created %s in the future (clock skew limit %s)", h.ID, (-age).Round(time.Second), skew)
	}
	var priv *HPKEPrivateKey
	for _, k := range o.HPKEKeys {
		if k.kid == h.KeyID {
			priv = k
			break
		}
	}
	if priv == nil {
		return nil, reject(ErrUnknownKey, "message is sealed to HPKE key %q, which this runner does not hold", h.KeyID)
	}
	if priv.Suite() != h.Suite {
		return nil, reject(ErrMalformed, "header suite %s does not match key %s (%s)", h.Suite, h.KeyID, priv.Suite())
	}
	r, err := hpke.NewRecipient(enc, priv.k, hpke.HKDFSHA256(), hpke.ChaCha20Poly1305(), hpkeInfo)
	if err != nil {
		return nil, reject(ErrDecrypt, "HPKE encapsulated key is invalid")
	}
	req, err := r.Open(hdrBytes, ct)
	if err != nil {
		return nil, reject(ErrDecrypt, "HPKE authentication failed (tampered data or mismatched key)")
	}
	// Record the id last: only authentic messages may occupy the store.
	if o.Replay != nil {
		if err := o.Replay.Record(ctx, queue, h.ID, created.Add(window+skew)); err != nil {
			return nil, err
		}
	}
	return &Opened{Suite: h.Suite, Request: req, Prefix: prefix, Signer: key.Fingerprint(),
		FingerprintMismatch: h.Signer != "" && h.Signer != key.Fingerprint(), HPKE: &h}, nil
}
