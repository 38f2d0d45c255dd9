package envelope

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// PassphraseCandidates returns what to try for a passphrase file's bytes: the
// raw bytes, then (operators often forget `echo -n`) the bytes without one
// trailing newline.
func PassphraseCandidates(raw []byte) [][]byte {
	c := [][]byte{raw}
	if t, ok := bytes.CutSuffix(raw, []byte("\n")); ok {
		if t2, ok := bytes.CutSuffix(t, []byte("\r")); ok {
			t = t2
		}
		c = append(c, t)
	}
	return c
}

// ParseMessagePrivateKey reads an RSA private key: legacy encrypted PEM
// (`Proc-Type: 4,ENCRYPTED`), OpenSSH (bcrypt) or encrypted PKCS#8, or the
// same unencrypted. passphrase is the raw passphrase file content; see
// PassphraseCandidates. Parse once and keep the result: an OpenSSH key costs
// about 150 ms to open.
func ParseMessagePrivateKey(data, passphrase []byte) (*MessagePrivateKey, error) {
	raw, err := parsePrivate(data, passphrase)
	if err != nil {
		return nil, err
	}
	k, ok := raw.(*rsa.PrivateKey)
	if !ok {
		return nil, reject(ErrKeyType, "message private key is %s, want RSA", keyKind(raw))
	}
	if err := k.Validate(); err != nil {
		return nil, reject(ErrKeyType, "RSA private key is inconsistent: %v", err)
	}
	return NewMessagePrivateKey(k)
}

// ParseSigningPrivateKey reads an Ed25519 private key from an OpenSSH or
// PKCS#8 PEM file; passphrase may be nil for an unencrypted key.
func ParseSigningPrivateKey(data, passphrase []byte) (*SigningPrivateKey, error) {
	raw, err := parsePrivate(data, passphrase)
	if err != nil {
		return nil, err
	}
	switch k := raw.(type) {
	case *ed25519.PrivateKey:
		return NewSigningPrivateKey(*k)
	case ed25519.PrivateKey:
		return NewSigningPrivateKey(k)
	}
	return nil, reject(ErrKeyType, "signing key is %s, want Ed25519", keyKind(raw))
}

func parsePrivate(data, passphrase []byte) (any, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, reject(ErrMalformed, "private key file holds no PEM block")
	}
	encrypted := block.Type == "ENCRYPTED PRIVATE KEY" || x509.IsEncryptedPEMBlock(block) //nolint:staticcheck // legacy PEM is the StudioML format
	if !encrypted && block.Type == "OPENSSH PRIVATE KEY" {
		// An OpenSSH key says whether it is encrypted only inside its body.
		_, err := ssh.ParseRawPrivateKey(data)
		var missing *ssh.PassphraseMissingError
		encrypted = errors.As(err, &missing)
	}
	if !encrypted {
		if block.Type == "PRIVATE KEY" {
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, reject(ErrMalformed, "PKCS#8 private key: %v", err)
			}
			return k, nil
		}
		k, err := ssh.ParseRawPrivateKey(data)
		if err != nil {
			return nil, reject(ErrMalformed, "private key: %v", err)
		}
		return k, nil
	}
	if len(passphrase) == 0 {
		return nil, fmt.Errorf("%w: the key is encrypted and no passphrase was given", ErrPassphrase)
	}
	var lastErr error
	for _, pw := range PassphraseCandidates(passphrase) {
		var k any
		var err error
		if block.Type == "ENCRYPTED PRIVATE KEY" {
			var der []byte
			if der, err = decryptPKCS8(block.Bytes, pw); err == nil {
				if k, err = x509.ParsePKCS8PrivateKey(der); err != nil {
					err = errPKCS8Password // garbage after a lucky padding check
				}
			}
		} else {
			k, err = ssh.ParseRawPrivateKeyWithPassphrase(data, pw)
		}
		if err == nil {
			return k, nil
		}
		lastErr = err
		if !isPasswordError(err) {
			return nil, reject(ErrMalformed, "encrypted private key: %v", err)
		}
	}
	_ = lastErr // never shown: it could hint at passphrase bytes
	return nil, fmt.Errorf("%w (tried the passphrase file as is and without a trailing newline)", ErrPassphrase)
}

func isPasswordError(err error) bool {
	return errors.Is(err, x509.IncorrectPasswordError) || errors.Is(err, errPKCS8Password) ||
		strings.Contains(err.Error(), "decryption password incorrect")
}

func keyKind(k any) string {
	switch k := k.(type) {
	case *rsa.PrivateKey:
		return fmt.Sprintf("RSA-%d", k.N.BitLen())
	case *ed25519.PrivateKey, ed25519.PrivateKey:
		return "Ed25519"
	default:
		return fmt.Sprintf("%T", k)
	}
}

// ParseMessagePublicKey reads an RSA public key as PKCS#1 (`RSA PUBLIC KEY`),
// SPKI (`PUBLIC KEY`) or an `ssh-rsa` authorized_keys line.
func ParseMessagePublicKey(data []byte) (*MessagePublicKey, error) {
	trimmed := bytes.TrimSpace(data)
	if bytes.HasPrefix(trimmed, []byte("ssh-")) {
		pk, _, _, _, err := ssh.ParseAuthorizedKey(trimmed)
		if err != nil {
			return nil, reject(ErrMalformed, "public key line: %v", err)
		}
		if pk.Type() != ssh.KeyAlgoRSA {
			return nil, reject(ErrKeyType, "public key is %s, want ssh-rsa", pk.Type())
		}
		k, _ := pk.(ssh.CryptoPublicKey).CryptoPublicKey().(*rsa.PublicKey)
		return NewMessagePublicKey(k)
	}
	block, _ := pem.Decode(trimmed)
	if block == nil {
		return nil, reject(ErrMalformed, "public key file holds neither PEM nor an ssh-rsa line")
	}
	switch block.Type {
	case "RSA PUBLIC KEY":
		k, err := x509.ParsePKCS1PublicKey(block.Bytes)
		if err != nil {
			return nil, reject(ErrMalformed, "PKCS#1 public key: %v", err)
		}
		return NewMessagePublicKey(k)
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, reject(ErrMalformed, "SPKI public key: %v", err)
		}
		rk, ok := k.(*rsa.PublicKey)
		if !ok {
			return nil, reject(ErrKeyType, "public key is %T, want RSA", k)
		}
		return NewMessagePublicKey(rk)
	}
	return nil, reject(ErrKeyType, "PEM block %q is not an RSA public key", block.Type)
}

// ParseSigningPublicKey reads one `ssh-ed25519 AAAA... comment` line.
func ParseSigningPublicKey(line []byte) (SigningPublicKey, error) {
	pk, comment, _, rest, err := ssh.ParseAuthorizedKey(bytes.TrimSpace(line))
	if err != nil {
		return SigningPublicKey{}, reject(ErrMalformed, "signing key line: %v", err)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return SigningPublicKey{}, reject(ErrMalformed, "signing key file holds more than one key")
	}
	if pk.Type() != ssh.KeyAlgoED25519 {
		return SigningPublicKey{}, reject(ErrKeyType, "signing key is %s, want ssh-ed25519", pk.Type())
	}
	k, _ := pk.(ssh.CryptoPublicKey).CryptoPublicKey().(ed25519.PublicKey)
	return NewSigningPublicKey(k, comment)
}

// GenerateMessageKey makes a new RSA message key.
func GenerateMessageKey(bits int) (*MessagePrivateKey, error) {
	if bits < 2048 {
		return nil, reject(ErrKeyType, "RSA message keys need at least 2048 bits, got %d", bits)
	}
	k, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		return nil, err
	}
	return NewMessagePrivateKey(k)
}

// MarshalEncryptedPEM writes the key as StudioML operators hold it: PKCS#1
// `RSA PRIVATE KEY` with legacy PEM encryption (`DEK-Info: AES-128-CBC`), as
// `ssh-keygen -e -m PEM -p` makes. Insecure by modern standards (MD5 KDF),
// but it is the format every existing StudioML deployment reads.
func (p *MessagePrivateKey) MarshalEncryptedPEM(passphrase []byte) ([]byte, error) {
	if len(passphrase) == 0 {
		return nil, errors.New("refusing to write an RSA private key without a passphrase")
	}
	//nolint:staticcheck // legacy PEM encryption is the format StudioML reads.
	block, err := x509.EncryptPEMBlock(rand.Reader, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(p.k), passphrase, x509.PEMCipherAES128)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(block), nil
}

// GenerateSigningKey makes a new Ed25519 signing key.
func GenerateSigningKey() (*SigningPrivateKey, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return NewSigningPrivateKey(k)
}

// MarshalOpenSSH writes the key in OpenSSH format, unencrypted when
// passphrase is empty.
func (p *SigningPrivateKey) MarshalOpenSSH(comment string, passphrase []byte) ([]byte, error) {
	var block *pem.Block
	var err error
	if len(passphrase) == 0 {
		block, err = ssh.MarshalPrivateKey(p.k, comment)
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(p.k, comment, passphrase)
	}
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(block), nil
}

func pemEncode(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
