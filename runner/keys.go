package runner

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/sealrun/sealrun/envelope"
)

// Keys is everything the runner needs to open requests and seal responses.
// Private keys are parsed once, by the KeySource.
type Keys struct {
	// MessageKeys are the RSA keys of the StudioML suite, current first.
	MessageKeys []*envelope.MessagePrivateKey
	// HPKEKeys are the HPKE suite's keys, selected by key id.
	HPKEKeys []*envelope.HPKEPrivateKey
	// SigningKeys bind queue prefixes to the senders' Ed25519 keys.
	SigningKeys *envelope.SigningKeys
	// ResponseKeys bind response-queue prefixes to RSA public keys; nil or
	// empty means no responses are sent.
	ResponseKeys *envelope.ResponseKeys
}

// KeySource supplies the runner's keys. Load is called before consuming and
// again after every signal on Changes; an error from Load is transient (the
// source is unreachable) unless the runner has never loaded keys.
//
// DirKeySource reads a directory; the secrets proxy client is the other
// implementation.
type KeySource interface {
	// Load returns the current keys. It fails when a required key is
	// missing or unreadable.
	Load(ctx context.Context) (*Keys, error)
	// Changes signals (coalesced) that Load may return something new. The
	// channel closes when ctx ends.
	Changes(ctx context.Context) <-chan struct{}
}

// DirKeySource reads the StudioML Kubernetes secret layout (spec §4):
//
//	<dir>/message/encryption/ssh-privatekey   RSA private key (PEM, encrypted)
//	<dir>/message/passphrase/ssh-passphrase   its passphrase
//	<dir>/message/hpke/*.key                  optional HPKE private keys
//	<dir>/queues/signing/<prefix>             ssh-ed25519 line per prefix
//	<dir>/queues/response-encrypt/<prefix>    RSA public key PEM per prefix
//
// Changes polls file names, sizes and modification times, which also sees
// Kubernetes' atomic ..data symlink swaps.
type DirKeySource struct {
	Dir string
	// Poll is the change-detection interval (default 2s).
	Poll time.Duration
}

// Load implements KeySource.
func (s *DirKeySource) Load(ctx context.Context) (*Keys, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k := &Keys{}
	privPath := filepath.Join(s.Dir, "message", "encryption", "ssh-privatekey")
	priv, err := os.ReadFile(privPath)
	switch {
	case err == nil:
		pass, err := os.ReadFile(filepath.Join(s.Dir, "message", "passphrase", "ssh-passphrase"))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("key dir: read passphrase: %w", err)
		}
		mk, err := envelope.ParseMessagePrivateKey(priv, pass)
		if err != nil {
			// The error names the file and the failure, never the passphrase.
			return nil, fmt.Errorf("key dir: %s: %w", privPath, err)
		}
		k.MessageKeys = []*envelope.MessagePrivateKey{mk}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("key dir: read message key: %w", err)
	}
	hpkeFiles, _ := filepath.Glob(filepath.Join(s.Dir, "message", "hpke", "*.key"))
	sort.Strings(hpkeFiles)
	for _, f := range hpkeFiles {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("key dir: %w", err)
		}
		hk, err := envelope.ParseHPKEPrivateKey(data)
		if err != nil {
			return nil, fmt.Errorf("key dir: %s: %w", f, err)
		}
		k.HPKEKeys = append(k.HPKEKeys, hk)
	}
	if len(k.MessageKeys) == 0 && len(k.HPKEKeys) == 0 {
		return nil, fmt.Errorf("key dir %s: no message private key: put an RSA key in message/encryption/ssh-privatekey or HPKE keys in message/hpke/*.key", s.Dir)
	}
	if k.SigningKeys, err = envelope.LoadSigningKeysDir(filepath.Join(s.Dir, "queues", "signing")); err != nil {
		return nil, fmt.Errorf("key dir: signing keys: %w", err)
	}
	if k.SigningKeys.Len() == 0 {
		return nil, fmt.Errorf("key dir %s: no signing keys in queues/signing: no envelope could be verified", s.Dir)
	}
	rdir := filepath.Join(s.Dir, "queues", "response-encrypt")
	if _, err := os.Stat(rdir); err == nil {
		if k.ResponseKeys, err = envelope.LoadResponseKeysDir(rdir); err != nil {
			return nil, fmt.Errorf("key dir: response keys: %w", err)
		}
	}
	return k, nil
}

// Changes implements KeySource by polling.
func (s *DirKeySource) Changes(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	poll := s.Poll
	if poll <= 0 {
		poll = 2 * time.Second
	}
	// Stamp now, not in the goroutine: a change made right after Changes
	// returns must be seen.
	last := s.stamp()
	go func() {
		defer close(ch)
		t := time.NewTicker(poll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if now := s.stamp(); now != last {
				last = now
				select {
				case ch <- struct{}{}:
				default: // a signal is already pending
				}
			}
		}
	}()
	return ch
}

// stamp hashes the names, sizes and mtimes of every file below Dir,
// following symlinks.
func (s *DirKeySource) stamp() uint64 {
	h := fnv.New64a()
	_ = filepath.WalkDir(s.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			fmt.Fprintf(h, "err %s\n", p)
			return nil
		}
		if strings.HasPrefix(d.Name(), "..") && d.Name() != ".." {
			// Kubernetes' ..data and timestamped dirs: the visible names
			// are symlinks into them, stat'ed below.
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		fi, err := os.Stat(p)
		if err != nil {
			fmt.Fprintf(h, "dangling %s\n", p)
			return nil
		}
		fmt.Fprintf(h, "%s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
		return nil
	})
	return h.Sum64()
}
