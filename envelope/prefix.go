package envelope

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// MinPrefixLen is the shortest queue prefix a key may be bound to, so a
// stray one-letter file cannot claim every queue.
const MinPrefixLen = 4

// PrefixMap binds keys to queue-name prefixes. Lookup picks the exact match,
// else the longest prefix of the queue name (spec §3). It is immutable; build
// a new one to change it.
type PrefixMap[K any] struct {
	keys   map[string]K
	sorted []string // longest first
}

// NewPrefixMap validates prefixes and builds the map.
func NewPrefixMap[K any](m map[string]K) (*PrefixMap[K], error) {
	p := &PrefixMap[K]{keys: make(map[string]K, len(m))}
	for prefix, k := range m {
		if len(prefix) < MinPrefixLen {
			return nil, fmt.Errorf("queue prefix %q is shorter than %d characters", prefix, MinPrefixLen)
		}
		p.keys[prefix] = k
		p.sorted = append(p.sorted, prefix)
	}
	sort.Slice(p.sorted, func(i, j int) bool {
		if len(p.sorted[i]) != len(p.sorted[j]) {
			return len(p.sorted[i]) > len(p.sorted[j])
		}
		return p.sorted[i] < p.sorted[j]
	})
	return p, nil
}

// Lookup returns the key for queue and the prefix that selected it.
func (p *PrefixMap[K]) Lookup(queue string) (prefix string, key K, ok bool) {
	if p == nil {
		return "", key, false
	}
	if k, ok := p.keys[queue]; ok {
		return queue, k, true
	}
	for _, pre := range p.sorted {
		if strings.HasPrefix(queue, pre) {
			return pre, p.keys[pre], true
		}
	}
	return "", key, false
}

// Len is the number of prefixes.
func (p *PrefixMap[K]) Len() int {
	if p == nil {
		return 0
	}
	return len(p.keys)
}

// Prefixes lists the prefixes, sorted.
func (p *PrefixMap[K]) Prefixes() []string {
	if p == nil {
		return nil
	}
	out := append([]string(nil), p.sorted...)
	sort.Strings(out)
	return out
}

// SigningKeys selects the Ed25519 key that must have signed a queue's messages.
type SigningKeys = PrefixMap[SigningPublicKey]

// ResponseKeys selects the RSA key responses for a queue are sealed to.
type ResponseKeys = PrefixMap[*MessagePublicKey]

// LoadSigningKeysDir reads a directory with one file per prefix, each an
// `ssh-ed25519` line (the Kubernetes secret mount layout: names starting with
// "." and the dummy "info" item are skipped).
func LoadSigningKeysDir(dir string) (*SigningKeys, error) {
	return loadPrefixDir(dir, ParseSigningPublicKey)
}

// LoadResponseKeysDir reads a directory with one RSA public key per prefix.
func LoadResponseKeysDir(dir string) (*ResponseKeys, error) {
	return loadPrefixDir(dir, ParseMessagePublicKey)
}

func loadPrefixDir[K any](dir string, parse func([]byte) (K, error)) (*PrefixMap[K], error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	m := map[string]K{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || name == "info" {
			continue
		}
		path := filepath.Join(dir, name)
		if fi, err := os.Stat(path); err != nil || fi.IsDir() {
			continue // dangling link or sub-directory: not a key
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		k, err := parse(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		m[name] = k
	}
	return NewPrefixMap(m)
}
