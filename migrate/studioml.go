package migrate

import (
	"bytes"
	"strings"

	"github.com/sealrun/sealrun/secrets"
)

// StudioML file and data-key names (studioml-format.md §4).
const (
	studioPrivateKey = "ssh-privatekey"
	studioPublicKey  = "ssh-publickey"
	studioPassphrase = "ssh-passphrase"
	studioInfo       = "info"
)

// DefaultKeyID is the key id the StudioML message key pair is imported
// under: the layout has a single message key.
const DefaultKeyID = "message"

// role is what a StudioML file or data key holds.
type role int

const (
	roleUnknown role = iota
	rolePrivateKey
	rolePublicKey
	rolePassphrase
	roleSigning
	roleResponse
)

// studioItem builds the model for one StudioML value. name is the file or
// data key (the queue prefix for signing and response keys).
func studioItem(r role, name, keyID, origin string, value []byte) Item {
	it := Item{Key: name, Origin: origin}
	switch r {
	case rolePrivateKey:
		// The PEM is stored exactly as operators hold it (still encrypted
		// with its passphrase): re-encoding could lose the format StudioML
		// clients and old runners read.
		it.Model, it.Key = &secrets.MessagePrivateKey{KeyID: keyID, PEM: secrets.Secret(bytes.Clone(value))}, keyID
	case rolePassphrase:
		// Raw bytes as in the file; runners try them with and without a
		// trailing newline (envelope.PassphraseCandidates).
		it.Model, it.Key = &secrets.MessagePassphrase{KeyID: keyID, Passphrase: secrets.Secret(bytes.Clone(value))}, keyID
	case roleSigning:
		it.Model = &secrets.SigningKey{QueuePrefix: name, PublicKey: strings.TrimSpace(string(value))}
	case roleResponse:
		it.Model = &secrets.ResponseKey{ResponsePrefix: name, PublicKeyPEM: string(value)}
	case rolePublicKey:
		it.Kind, it.Key = "message-public-key", keyID
		it.SkipReason = "public half of the message key: derived from the private key, not stored"
		return it
	default:
		it.Kind = "unknown"
		it.SkipReason = "not part of the StudioML key layout"
		return it
	}
	it.Kind = it.Model.Kind()
	return it
}

// sniff guesses the role of a value whose name does not say it, from its
// first bytes only (a key type marker, never printed).
func sniff(value []byte) role {
	v := bytes.TrimSpace(value)
	switch {
	case bytes.HasPrefix(v, []byte("ssh-ed25519 ")):
		return roleSigning
	case bytes.HasPrefix(v, []byte("-----BEGIN RSA PUBLIC KEY-----")),
		bytes.HasPrefix(v, []byte("-----BEGIN PUBLIC KEY-----")),
		bytes.HasPrefix(v, []byte("ssh-rsa ")):
		return roleResponse
	}
	return roleUnknown
}
