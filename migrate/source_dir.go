package migrate

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// maxFileSize bounds every file a source reads: key files are a few KiB, and
// a huge file is a mistake that should not exhaust memory.
const maxFileSize = 1 << 20

// DirSource reads the StudioML Kubernetes mount layout:
//
//	PATH/message/encryption/ssh-privatekey   -> message-private-key "message"
//	PATH/message/encryption/ssh-publickey    -> skipped (derived from the private key)
//	PATH/message/passphrase/ssh-passphrase   -> message-passphrase "message"
//	PATH/queues/signing/<prefix>             -> signing-key <prefix>
//	PATH/queues/response-encrypt/<prefix>    -> response-key <prefix>
//
// Names starting with "." (Kubernetes' ..data symlinks) and "info" are skipped.
type DirSource struct {
	Path  string
	KeyID string // default DefaultKeyID
}

// Items implements Source.
func (d *DirSource) Items(ctx context.Context) ([]Item, error) {
	keyID := d.KeyID
	if keyID == "" {
		keyID = DefaultKeyID
	}
	if fi, err := os.Stat(d.Path); err != nil {
		return nil, fmt.Errorf("dir source: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("dir source %s: not a directory", d.Path)
	}
	layout := []struct {
		dir   string
		fixed map[string]role // nil: every file is a prefix
		role  role
	}{
		{dir: "message/encryption", fixed: map[string]role{studioPrivateKey: rolePrivateKey, studioPublicKey: rolePublicKey}},
		{dir: "message/passphrase", fixed: map[string]role{studioPassphrase: rolePassphrase}},
		{dir: "queues/signing", role: roleSigning},
		{dir: "queues/response-encrypt", role: roleResponse},
	}
	var items []Item
	found := 0
	for _, l := range layout {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		dir := filepath.Join(d.Path, filepath.FromSlash(l.dir))
		entries, err := os.ReadDir(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("dir source: %w", err)
		}
		found++
		for _, e := range entries {
			name := e.Name()
			if strings.HasPrefix(name, ".") || name == studioInfo {
				continue
			}
			path := filepath.Join(dir, name)
			fi, err := os.Stat(path) // follows the ..data symlinks
			if err != nil || fi.IsDir() {
				continue // dangling link or sub-directory: not a key
			}
			r := l.role
			if l.fixed != nil {
				r = l.fixed[name]
			}
			data, err := readSmall(path, fi)
			if err != nil {
				items = append(items, Item{Kind: "unknown", Key: name, Origin: path, Err: err})
				continue
			}
			items = append(items, studioItem(r, name, keyID, path, data))
		}
	}
	if found == 0 {
		return nil, fmt.Errorf("dir source %s: no StudioML layout (message/encryption, message/passphrase, queues/signing, queues/response-encrypt) found", d.Path)
	}
	return items, nil
}

func readSmall(path string, fi fs.FileInfo) ([]byte, error) {
	if fi.Size() > maxFileSize {
		return nil, fmt.Errorf("%s: %d bytes, larger than the %d a key file can be", path, fi.Size(), maxFileSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return data, nil
}

// Close implements Source.
func (d *DirSource) Close() error { return nil }
