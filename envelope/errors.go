package envelope

import (
	"errors"
	"fmt"
)

// Sentinel errors. Each rejection wraps exactly one of them; test with
// errors.Is. Rejections says which are permanent (retrying the same message
// with the same keys gives the same answer).
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

// Rejection is everything a consumer needs to know about one sentinel.
// Adding a sentinel is one row here.
type Rejection struct {
	Err error
	// Label is its metric label and rejection-record reason code.
	Label string
	// Permanent: the message can never be opened, so a consumer must
	// reject it without requeue.
	Permanent bool
	// KeyDependent: a key the consumer has not loaded yet may cure it, so
	// until its keys are loaded it is treated as transient.
	KeyDependent bool
}

// Rejections is the table of every sentinel, most specific first.
var Rejections = []Rejection{
	{ErrMalformed, "malformed", true, false},
	{ErrBadSignature, "bad_signature", true, true},
	{ErrNoSigningKey, "no_signing_key", true, true},
	{ErrDecrypt, "decrypt", true, true},
	{ErrUnknownKey, "unknown_key", true, true},
	{ErrClearTextRefused, "clear_text_refused", true, false},
	{ErrReplay, "replay", true, false},
	{ErrWrongQueue, "wrong_queue", true, false},
	{ErrKeyType, "key_type", true, false},
	{ErrNoResponseKey, "no_response_key", false, false},
	{ErrPassphrase, "passphrase", false, false},
}

// rejection is err's row; ok is false for an error no sentinel wraps.
func rejection(err error) (r Rejection, ok bool) {
	for _, r := range Rejections {
		if errors.Is(err, r.Err) {
			return r, true
		}
	}
	return Rejection{}, false
}

// Permanent reports whether err means the message can never be opened, so a
// consumer must reject it without requeue. Anything else (a replay store
// that is down, a cancelled context) is transient.
func Permanent(err error) bool { r, _ := rejection(err); return r.Permanent }

// KeyDependent reports whether a key not loaded yet may cure err.
func KeyDependent(err error) bool { r, _ := rejection(err); return r.KeyDependent }

// Reason is err's sentinel label, or "other".
func Reason(err error) string {
	if r, ok := rejection(err); ok {
		return r.Label
	}
	return "other"
}

// reject wraps a sentinel with a reason that never contains key material.
func reject(kind error, format string, a ...any) error {
	return fmt.Errorf("%w: %s", kind, fmt.Sprintf(format, a...))
}
