package envelope

import (
	"errors"
	"fmt"
)

// Sentinel errors. Each rejection wraps exactly one of them; test with
// errors.Is. All of them are permanent: retrying the same message with the
// same keys gives the same answer.
var (
	// ErrMalformed: the body or payload does not follow the wire format
	// (bad JSON, bad base64, wrong number of commas, truncated fields).
	ErrMalformed = errors.New("malformed message")
	// ErrBadSignature: the signature is missing or does not verify.
	ErrBadSignature = errors.New("bad signature")
	// ErrNoSigningKey: no signing key is bound to a prefix of the queue.
	ErrNoSigningKey = errors.New("no signing key matches the queue")
	// ErrDecrypt: the message could not be decrypted with the key held
	// (wrong key, tampered ciphertext, short key material).
	ErrDecrypt = errors.New("decryption failed")
	// ErrUnknownKey: an HPKE message names a key id this opener does not hold.
	ErrUnknownKey = errors.New("unknown key id")
	// ErrClearTextRefused: a clear-text request arrived on a queue that does
	// not allow clear text.
	ErrClearTextRefused = errors.New("clear-text message refused")
	// ErrReplay: an HPKE message was already seen, or is outside the window.
	ErrReplay = errors.New("replayed or expired message")
	// ErrWrongQueue: an HPKE message was sealed for another queue.
	ErrWrongQueue = errors.New("message sealed for another queue")
	// ErrKeyType: a key file holds a key of the wrong type or size.
	ErrKeyType = errors.New("wrong key type")
	// ErrNoResponseKey: no response key is bound to a prefix of the
	// response queue, so a report cannot be sealed.
	ErrNoResponseKey = errors.New("no response key matches the queue")
	// ErrPassphrase: no passphrase candidate decrypts the private key.
	ErrPassphrase = errors.New("wrong passphrase for private key")
)

var permanent = []error{
	ErrMalformed, ErrBadSignature, ErrNoSigningKey, ErrDecrypt, ErrUnknownKey,
	ErrClearTextRefused, ErrReplay, ErrWrongQueue, ErrKeyType,
}

// Permanent reports whether err means the message can never be opened, so a
// consumer must reject it without requeue. Anything else (a replay store
// that is down, a cancelled context) is transient.
func Permanent(err error) bool {
	for _, p := range permanent {
		if errors.Is(err, p) {
			return true
		}
	}
	return false
}

// reject wraps a sentinel with a reason that never contains key material.
func reject(kind error, format string, a ...any) error {
	return fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, a...))
}
