package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"errors"
	"fmt"
	"hash"
)

// Encrypted PKCS#8 (RFC 5958 / PKCS#5 v2.1 PBES2) is not in the standard
// library or x/crypto. We decrypt the one scheme OpenSSL, PyCryptodome and
// ssh-keygen produce: PBES2 with PBKDF2 (HMAC-SHA1/224/256/384/512) and
// AES-CBC. Anything else is refused with a clear error, never guessed at.

var errPKCS8Password = errors.New("pkcs8: decryption password incorrect")

var (
	oidPBES2      = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 13}
	oidPBKDF2     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 5, 12}
	oidHMACSHA1   = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 7}
	oidHMACSHA224 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 8}
	oidHMACSHA256 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 9}
	oidHMACSHA384 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 10}
	oidHMACSHA512 = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 11}
	oidAES128CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 2}
	oidAES192CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 22}
	oidAES256CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
)

type pkcs8Encrypted struct {
	Algo struct {
		Algorithm  asn1.ObjectIdentifier
		Parameters asn1.RawValue
	}
	Data []byte
}

type pbes2Params struct {
	KDF struct {
		Algorithm  asn1.ObjectIdentifier
		Parameters asn1.RawValue
	}
	Cipher struct {
		Algorithm  asn1.ObjectIdentifier
		Parameters asn1.RawValue
	}
}

type pbkdf2Params struct {
	Salt       []byte
	Iterations int
	KeyLength  int `asn1:"optional"`
	PRF        struct {
		Algorithm  asn1.ObjectIdentifier
		Parameters asn1.RawValue `asn1:"optional"`
	} `asn1:"optional"`
}

// maxPBKDF2Iterations bounds the work a hostile key file can ask for.
const maxPBKDF2Iterations = 10_000_000

func decryptPKCS8(der, password []byte) ([]byte, error) {
	var enc pkcs8Encrypted
	if rest, err := asn1.Unmarshal(der, &enc); err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("pkcs8: not an EncryptedPrivateKeyInfo")
	}
	if !enc.Algo.Algorithm.Equal(oidPBES2) {
		return nil, fmt.Errorf("pkcs8: encryption scheme %v is not supported (want PBES2)", enc.Algo.Algorithm)
	}
	var p pbes2Params
	if _, err := asn1.Unmarshal(enc.Algo.Parameters.FullBytes, &p); err != nil {
		return nil, fmt.Errorf("pkcs8: bad PBES2 parameters")
	}
	if !p.KDF.Algorithm.Equal(oidPBKDF2) {
		return nil, fmt.Errorf("pkcs8: key derivation %v is not supported (want PBKDF2)", p.KDF.Algorithm)
	}
	var kp pbkdf2Params
	if _, err := asn1.Unmarshal(p.KDF.Parameters.FullBytes, &kp); err != nil {
		return nil, fmt.Errorf("pkcs8: bad PBKDF2 parameters")
	}
	if kp.Iterations < 1 || kp.Iterations > maxPBKDF2Iterations {
		return nil, fmt.Errorf("pkcs8: PBKDF2 iteration count %d out of range", kp.Iterations)
	}
	var h func() hash.Hash
	switch prf := kp.PRF.Algorithm; {
	case len(prf) == 0 || prf.Equal(oidHMACSHA1):
		h = sha1.New
	case prf.Equal(oidHMACSHA224):
		h = sha256.New224
	case prf.Equal(oidHMACSHA256):
		h = sha256.New
	case prf.Equal(oidHMACSHA384):
		h = sha512.New384
	case prf.Equal(oidHMACSHA512):
		h = sha512.New
	default:
		return nil, fmt.Errorf("pkcs8: PBKDF2 PRF %v is not supported", prf)
	}
	var keyLen int
	switch c := p.Cipher.Algorithm; {
	case c.Equal(oidAES128CBC):
		keyLen = 16
	case c.Equal(oidAES192CBC):
		keyLen = 24
	case c.Equal(oidAES256CBC):
		keyLen = 32
	default:
		return nil, fmt.Errorf("pkcs8: cipher %v is not supported (want AES-CBC)", c)
	}
	var iv []byte
	if _, err := asn1.Unmarshal(p.Cipher.Parameters.FullBytes, &iv); err != nil || len(iv) != aes.BlockSize {
		return nil, fmt.Errorf("pkcs8: bad AES-CBC IV")
	}
	if len(enc.Data) == 0 || len(enc.Data)%aes.BlockSize != 0 {
		return nil, fmt.Errorf("pkcs8: ciphertext is not a whole number of blocks")
	}
	key, err := pbkdf2.Key(h, string(password), kp.Salt, kp.Iterations, keyLen)
	if err != nil {
		return nil, fmt.Errorf("pkcs8: %v", err)
	}
	block, _ := aes.NewCipher(key)
	out := make([]byte, len(enc.Data))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(out, enc.Data)
	// PKCS#7 padding; a wrong password shows up here (or as unparsable DER).
	n := int(out[len(out)-1])
	if n == 0 || n > aes.BlockSize {
		return nil, errPKCS8Password
	}
	for _, b := range out[len(out)-n:] {
		if int(b) != n {
			return nil, errPKCS8Password
		}
	}
	return out[:len(out)-n], nil
}
