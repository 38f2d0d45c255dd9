package migrate

import (
	"errors"
	"fmt"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/secrets"
)

// ErrInvalid marks an item that failed validation and was not imported.
var ErrInvalid = errors.New("invalid item")

// validate checks every key item parses with the envelope package before
// anything is written, so a broken key never reaches the store where a
// runner would fail on it later. A private key is checked together with the
// passphrase of the same key id from the same source; when the pair does not
// open, both are rejected so no half of the pair is imported.
func validate(items []Item) {
	pass := map[string]int{} // key id -> index of its passphrase item
	for i, it := range items {
		if p, ok := it.Model.(*secrets.MessagePassphrase); ok && it.Err == nil {
			pass[p.KeyID] = i
		}
	}
	for i := range items {
		it := &items[i]
		if it.Err != nil {
			it.Err = invalid(it.Err)
			continue
		}
		if it.SkipReason != "" {
			continue
		}
		if it.Model == nil {
			it.Err = invalid(errors.New("source produced no model"))
			continue
		}
		switch m := it.Model.(type) {
		case *secrets.MessagePrivateKey:
			var pw []byte
			pi, hasPass := pass[m.KeyID]
			if hasPass {
				pw = items[pi].Model.(*secrets.MessagePassphrase).Passphrase.Reveal()
			}
			if _, err := envelope.ParseMessagePrivateKey(m.PEM.Reveal(), pw); err != nil {
				it.Err = invalid(fmt.Errorf("message private key %q does not open: %w", m.KeyID, err))
				if hasPass && errors.Is(err, envelope.ErrPassphrase) {
					items[pi].Err = invalid(fmt.Errorf("passphrase does not open message private key %q", m.KeyID))
				}
			}
		case *secrets.MessagePassphrase:
			if len(m.Passphrase) == 0 {
				it.Err = invalid(errors.New("empty passphrase"))
			}
		case *secrets.SigningKey:
			if len(m.QueuePrefix) < envelope.MinPrefixLen {
				it.Err = invalid(fmt.Errorf("queue prefix %q is shorter than %d characters", m.QueuePrefix, envelope.MinPrefixLen))
			} else if _, err := envelope.ParseSigningPublicKey([]byte(m.PublicKey)); err != nil {
				it.Err = invalid(fmt.Errorf("signing key for prefix %q: %w", m.QueuePrefix, err))
			}
		case *secrets.ResponseKey:
			if len(m.ResponsePrefix) < envelope.MinPrefixLen {
				it.Err = invalid(fmt.Errorf("response prefix %q is shorter than %d characters", m.ResponsePrefix, envelope.MinPrefixLen))
			} else if _, err := envelope.ParseMessagePublicKey([]byte(m.PublicKeyPEM)); err != nil {
				it.Err = invalid(fmt.Errorf("response key for prefix %q: %w", m.ResponsePrefix, err))
			}
		case *secrets.Raw:
			if len(m.Value) == 0 {
				// The overlay cannot store (and Custodia cannot read) empty values.
				it.Err = invalid(errors.New("empty value"))
			}
		}
	}
}

func invalid(err error) error {
	if errors.Is(err, ErrInvalid) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrInvalid, err)
}
