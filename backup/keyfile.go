package backup

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/go-jose/go-jose/v4"

	"github.com/sealrun/sealrun/storage/overlay"
)

// KeyID names a key file the way sealrun does: an overlay master key (a
// Custodia JWK) by its kid, or by its RFC 7638 thumbprint when it has none
// (as the overlay's key ring names it); any other file (a PEM private key,
// an HPKE key) by "sha256:" and the start of its SHA-256.
func KeyID(data []byte) string {
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(data); err == nil {
		if raw, ok := jwk.Key.([]byte); ok {
			if k, err := overlay.NewKey(jwk.KeyID, raw); err == nil {
				return k.ID
			}
		}
	}
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:16])
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// WriteShares writes each share as DIR/<key>-share-<i>-of-<n>.txt and the
// same lines as a QR code in .png, mode 0600 in a 0700 directory, never
// replacing a file. It returns the paths written.
func WriteShares(dir string, shares []Share) ([]string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("share directory: %w", err)
	}
	var paths []string
	for _, s := range shares {
		base := filepath.Join(dir, fmt.Sprintf("%s-share-%d-of-%d", strings.Trim(unsafeName.ReplaceAllString(s.KeyID, "_"), "_."), s.Index, s.Total))
		png, err := s.QR()
		if err != nil {
			return paths, fmt.Errorf("share %d: QR code: %w", s.Index, err)
		}
		for _, f := range []struct {
			path string
			data []byte
		}{{base + ".txt", s.Text()}, {base + ".png", png}} {
			if err := writeNew(f.path, f.data); errors.Is(err, fs.ErrExist) {
				return paths, fmt.Errorf("%s exists: choose an empty --out directory (shares are never overwritten)", f.path)
			} else if err != nil {
				return paths, err
			}
			paths = append(paths, f.path)
		}
	}
	return paths, nil
}

// writeNew creates path 0600 with O_EXCL and removes it again on a failed write.
func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// WriteNewFile writes a restored key file or a store backup, 0600, never
// replacing a file.
func WriteNewFile(path string, data []byte) error {
	if err := writeNew(path, data); errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists: write to a new path (an existing file is never replaced)", path)
	} else if err != nil {
		return err
	}
	return nil
}
