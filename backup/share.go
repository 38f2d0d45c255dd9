// Package backup keeps sealrun recoverable when its keys or its store are
// lost: a key file split into printable Shamir shares (K of N restore it),
// and a consistent export of the encrypted store that never holds a
// plaintext.
//
// Shamir's scheme is circl's secretsharing over the Ristretto255 scalar
// field (constant time): the key file is cut into 31-byte chunks, each a
// scalar shared with the same threshold. This package only frames bytes; the
// field arithmetic is the library's.
package backup

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/secretsharing"
)

// Version is the share format version written into every share.
const Version = 1

const (
	chunkSize  = 31 // bytes of secret per scalar: always below the group order
	scalarSize = 32
	// MaxSecret bounds a shared file: key files are small, and a share must
	// stay typable and fit one QR code.
	MaxSecret = 1024
	maxKeyID  = 200
	setIDSize = 8
	fpSize    = 8
	crcSize   = 4
)

// Share is one of N shares of a key file. Its value redacts itself when
// printed; only Text and QR write it out.
type Share struct {
	// KeyID is the id of the key the shares restore (a JWK's kid or
	// thumbprint, or "sha256:..." for other files).
	KeyID string
	// SetID identifies one split: shares of two splits never combine,
	// even of the same key.
	SetID [setIDSize]byte
	// Index is this share's number, 1..N.
	Index, Threshold, Total int
	// Length is the byte length of the key file.
	Length int
	// Fingerprint is the first bytes of the file's SHA-256, checked after
	// combining.
	Fingerprint [fpSize]byte
	value       []byte // one scalar per chunk
}

// String names the share without its value.
func (s Share) String() string {
	return fmt.Sprintf("share %d of %d (threshold %d) of key %s", s.Index, s.Total, s.Threshold, s.KeyID)
}

// GoString is String, so %#v redacts too.
func (s Share) GoString() string { return s.String() }

// Set is the split's id in hex, as share files print it.
func (s Share) Set() string { return hex.EncodeToString(s.SetID[:]) }

var g = group.Ristretto255

// Split shares secret (a key file's bytes) into total shares, any threshold
// of which restore it.
func Split(secret []byte, keyID string, total, threshold int) ([]Share, error) {
	switch {
	case len(secret) == 0:
		return nil, errors.New("split: the key file is empty")
	case len(secret) > MaxSecret:
		return nil, fmt.Errorf("split: the key file is %d bytes; shares hold at most %d", len(secret), MaxSecret)
	case keyID == "" || len(keyID) > maxKeyID:
		return nil, fmt.Errorf("split: key id must be 1 to %d bytes", maxKeyID)
	case threshold < 2:
		return nil, fmt.Errorf("split: threshold %d: need at least 2 (one share alone must not restore the key)", threshold)
	case total < threshold:
		return nil, fmt.Errorf("split: %d shares with threshold %d: shares must be at least the threshold", total, threshold)
	case total > 255:
		return nil, fmt.Errorf("split: %d shares: at most 255", total)
	}
	base := Share{KeyID: keyID, Threshold: threshold, Total: total, Length: len(secret)}
	if _, err := rand.Read(base.SetID[:]); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(secret)
	copy(base.Fingerprint[:], sum[:])
	shares := make([]Share, total)
	for i := range shares {
		shares[i] = base
		shares[i].Index = i + 1
	}
	for off := 0; off < len(secret); off += chunkSize {
		var buf [scalarSize]byte
		copy(buf[:], secret[off:min(off+chunkSize, len(secret))])
		s := g.NewScalar()
		if err := s.UnmarshalBinary(buf[:]); err != nil {
			return nil, fmt.Errorf("split: %w", err)
		}
		ss := secretsharing.New(rand.Reader, uint(threshold-1), s).Share(uint(total))
		for i, sh := range ss {
			b, err := sh.Value.MarshalBinary()
			if err != nil {
				return nil, fmt.Errorf("split: %w", err)
			}
			shares[i].value = append(shares[i].value, b...)
		}
	}
	return shares, nil
}

// Combine restores the key file from at least Threshold shares of one split.
// Every error says what is wrong with which share.
func Combine(shares []Share) ([]byte, error) {
	if len(shares) == 0 {
		return nil, errors.New("restore: no shares given")
	}
	first := shares[0]
	seen := map[int]bool{}
	for _, s := range shares {
		if err := s.check(); err != nil {
			return nil, err
		}
		switch {
		case s.KeyID != first.KeyID:
			return nil, fmt.Errorf("restore: %v and %v are of different keys: give shares of one key", first, s)
		case s.SetID != first.SetID || s.Threshold != first.Threshold || s.Total != first.Total || s.Length != first.Length || s.Fingerprint != first.Fingerprint:
			return nil, fmt.Errorf("restore: %v (set %s) and %v (set %s) come from different splits of the key: give shares of one split", first, first.Set(), s, s.Set())
		case seen[s.Index]:
			return nil, fmt.Errorf("restore: share %d of key %s is given twice: give %d different shares", s.Index, s.KeyID, s.Threshold)
		}
		seen[s.Index] = true
	}
	if len(shares) < first.Threshold {
		return nil, fmt.Errorf("restore: key %s needs %d shares of %d, got %d: find %d more", first.KeyID, first.Threshold, first.Total, len(shares), first.Threshold-len(shares))
	}
	chunks := (first.Length + chunkSize - 1) / chunkSize
	out := make([]byte, 0, chunks*chunkSize)
	for c := range chunks {
		ss := make([]secretsharing.Share, len(shares))
		for i, s := range shares {
			v := g.NewScalar()
			if err := v.UnmarshalBinary(s.value[c*scalarSize : (c+1)*scalarSize]); err != nil {
				return nil, fmt.Errorf("restore: %v is corrupted (value %d is not a field element)", s, c+1)
			}
			ss[i] = secretsharing.Share{ID: g.NewScalar().SetUint64(uint64(s.Index)), Value: v}
		}
		sec, err := secretsharing.Recover(uint(first.Threshold-1), ss)
		if err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		b, err := sec.MarshalBinary()
		if err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		if b[chunkSize] != 0 {
			return nil, errCorrupt(first)
		}
		out = append(out, b[:chunkSize]...)
	}
	for _, b := range out[first.Length:] {
		if b != 0 {
			return nil, errCorrupt(first)
		}
	}
	out = out[:first.Length]
	sum := sha256.Sum256(out)
	if subtle.ConstantTimeCompare(sum[:fpSize], first.Fingerprint[:]) != 1 {
		return nil, errCorrupt(first)
	}
	// Any Threshold shares give the same key: a further share that disagrees
	// is corrupted (or forged), and is worth knowing about now.
	if len(shares) > first.Threshold {
		for i := range shares[first.Threshold:] {
			alt := append(append([]Share(nil), shares[:first.Threshold-1]...), shares[first.Threshold+i])
			b, err := Combine(alt)
			if err != nil || !bytes.Equal(b, out) {
				return nil, fmt.Errorf("restore: %v does not agree with the others: it is corrupted; restore without it", shares[first.Threshold+i])
			}
		}
	}
	return out, nil
}

func errCorrupt(s Share) error {
	return fmt.Errorf("restore: the shares of key %s do not combine to the key they were split from (fingerprint mismatch): one is corrupted; try another combination of %d", s.KeyID, s.Threshold)
}

// check validates a share's own fields.
func (s Share) check() error {
	chunks := (s.Length + chunkSize - 1) / chunkSize
	switch {
	case s.Threshold < 2 || s.Total < s.Threshold || s.Total > 255:
		return fmt.Errorf("restore: %v: impossible threshold/total", s)
	case s.Index < 1 || s.Index > s.Total:
		return fmt.Errorf("restore: %v: index out of range", s)
	case s.Length < 1 || s.Length > MaxSecret || len(s.value) != chunks*scalarSize:
		return fmt.Errorf("restore: %v: value has the wrong length", s)
	case s.KeyID == "" || len(s.KeyID) > maxKeyID:
		return fmt.Errorf("restore: share %d: bad key id", s.Index)
	}
	return nil
}

// marshal is the share's binary form, ending in a 4-byte SHA-256 check:
// version, set id, index, threshold, total, key id length, key id, length,
// fingerprint, value.
func (s Share) marshal() []byte {
	b := []byte{Version}
	b = append(b, s.SetID[:]...)
	b = append(b, byte(s.Index), byte(s.Threshold), byte(s.Total), byte(len(s.KeyID)))
	b = append(b, s.KeyID...)
	b = binary.BigEndian.AppendUint16(b, uint16(s.Length))
	b = append(b, s.Fingerprint[:]...)
	b = append(b, s.value...)
	sum := sha256.Sum256(b)
	return append(b, sum[:crcSize]...)
}

// unmarshal parses marshal's output; what names the share in errors.
func unmarshal(b []byte, what string) (Share, error) {
	var s Share
	if len(b) < 1 {
		return s, fmt.Errorf("%s: empty", what)
	}
	if b[0] != Version {
		return s, fmt.Errorf("%s: format version %d; this sealrun reads version %d (use the sealrun release that wrote it)", what, b[0], Version)
	}
	const fixed = 1 + setIDSize + 4
	if len(b) < fixed+2+fpSize+crcSize {
		return s, fmt.Errorf("%s: too short: lines are missing", what)
	}
	body, sum := b[:len(b)-crcSize], b[len(b)-crcSize:]
	want := sha256.Sum256(body)
	if subtle.ConstantTimeCompare(want[:crcSize], sum) != 1 {
		return s, fmt.Errorf("%s: whole-share check failed although every line checks: lines of different shares are mixed, or a line is missing", what)
	}
	copy(s.SetID[:], body[1:])
	s.Index, s.Threshold, s.Total = int(body[1+setIDSize]), int(body[2+setIDSize]), int(body[3+setIDSize])
	n := int(body[4+setIDSize])
	rest := body[fixed:]
	if len(rest) < n+2+fpSize {
		return s, fmt.Errorf("%s: too short: lines are missing", what)
	}
	s.KeyID, rest = string(rest[:n]), rest[n:]
	s.Length, rest = int(binary.BigEndian.Uint16(rest)), rest[2:]
	copy(s.Fingerprint[:], rest)
	s.value = append([]byte(nil), rest[fpSize:]...)
	if err := s.check(); err != nil {
		return Share{}, fmt.Errorf("%s: %w", what, err)
	}
	return s, nil
}
