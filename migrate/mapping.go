package migrate

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	yaml "go.yaml.in/yaml/v3"

	"github.com/sealrun/sealrun/secrets"
)

// Encoding says how a stored value is encoded.
type Encoding string

// Value encodings.
const (
	EncodingRaw    Encoding = "raw"
	EncodingBase64 Encoding = "base64"
	// EncodingAuto keeps values that look like keys (PEM, ssh- lines) and
	// base64-decodes the rest. Allowed only for key kinds: a passphrase or a
	// raw value can be valid base64 by chance, so guessing would corrupt it.
	EncodingAuto Encoding = "auto"
)

// Rule maps names matching Match to a model kind.
type Rule struct {
	// Match is a regular expression on the name relative to the source
	// prefix (e.g. `^signing/(?P<key>[^/]+)$`).
	Match string `yaml:"match"`
	// Kind is message-private-key, message-passphrase, signing-key,
	// response-key or raw.
	Kind string `yaml:"kind"`
	// Key is the model key, a regexp template ("${key}", "$1"); default: the
	// first capture group if there is one, else the whole name.
	Key string `yaml:"key"`
	// Encoding is raw, base64 or auto (default raw; auto only for key kinds).
	Encoding Encoding `yaml:"encoding"`
	// Skip, when true, drops matching names (reported as skipped).
	Skip bool `yaml:"skip"`

	re *regexp.Regexp
}

// Mapping is an ordered list of rules: the first match wins; a name no rule
// matches is reported as skipped.
type Mapping struct {
	Rules []Rule `yaml:"rules"`
}

// DefaultMapping imports every name as a raw secret under the same name.
func DefaultMapping() *Mapping {
	m := &Mapping{Rules: []Rule{{Match: "^.+$", Kind: secrets.KindRaw, Key: "$0", Encoding: EncodingRaw}}}
	m.Rules[0].re = regexp.MustCompile(m.Rules[0].Match)
	return m
}

var mappableKinds = map[string]bool{
	secrets.KindMessagePrivateKey: true, secrets.KindMessagePassphrase: true,
	secrets.KindSigningKey: true, secrets.KindResponseKey: true, secrets.KindRaw: true,
}

// LoadMapping reads a mapping file.
func LoadMapping(path string) (*Mapping, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mapping: %w", err)
	}
	m, err := ParseMapping(data)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", path, err)
	}
	return m, nil
}

// ParseMapping strictly decodes and validates a mapping (unknown fields are
// errors).
func ParseMapping(data []byte) (*Mapping, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var m Mapping
	if err := dec.Decode(&m); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty mapping: want rules: [{match, kind, key, encoding}]")
		}
		return nil, err
	}
	if len(m.Rules) == 0 {
		return nil, errors.New("no rules")
	}
	for i := range m.Rules {
		r := &m.Rules[i]
		re, err := regexp.Compile(r.Match)
		if err != nil || r.Match == "" {
			return nil, fmt.Errorf("rule %d: match %q is not a regular expression", i+1, r.Match)
		}
		r.re = re
		if r.Skip {
			continue
		}
		if !mappableKinds[r.Kind] {
			return nil, fmt.Errorf("rule %d: kind %q: want message-private-key, message-passphrase, signing-key, response-key or raw", i+1, r.Kind)
		}
		switch r.Encoding {
		case "":
			r.Encoding = EncodingRaw
		case EncodingRaw, EncodingBase64:
		case EncodingAuto:
			if r.Kind == secrets.KindRaw || r.Kind == secrets.KindMessagePassphrase {
				return nil, fmt.Errorf("rule %d: encoding auto is ambiguous for %s (its value may be valid base64 by chance): say raw or base64", i+1, r.Kind)
			}
		default:
			return nil, fmt.Errorf("rule %d: encoding %q: want raw, base64 or auto", i+1, r.Encoding)
		}
	}
	return &m, nil
}

// item maps one named value to an item. origin names where it came from.
func (m *Mapping) item(name string, value []byte, origin string) Item {
	for _, r := range m.Rules {
		idx := r.re.FindStringSubmatchIndex(name)
		if idx == nil {
			continue
		}
		if r.Skip {
			return Item{Kind: "unknown", Key: name, Origin: origin, SkipReason: "skipped by mapping rule " + r.Match}
		}
		tmpl := r.Key
		if tmpl == "" {
			tmpl = "$0"
			if r.re.NumSubexp() > 0 {
				tmpl = "${1}"
			}
		}
		key := string(r.re.ExpandString(nil, tmpl, name, idx))
		it := Item{Kind: r.Kind, Key: key, Origin: origin}
		v, err := decode(r.Encoding, value)
		if err != nil {
			it.Err = fmt.Errorf("%s: %w", origin, err)
			return it
		}
		switch r.Kind {
		case secrets.KindMessagePrivateKey:
			it.Model = &secrets.MessagePrivateKey{KeyID: key, PEM: v}
		case secrets.KindMessagePassphrase:
			it.Model = &secrets.MessagePassphrase{KeyID: key, Passphrase: v}
		case secrets.KindSigningKey:
			it.Model = &secrets.SigningKey{QueuePrefix: key, PublicKey: strings.TrimSpace(string(v))}
		case secrets.KindResponseKey:
			it.Model = &secrets.ResponseKey{ResponsePrefix: key, PublicKeyPEM: string(v)}
		default:
			it.Model = &secrets.Raw{Name: key, Value: v}
		}
		return it
	}
	return Item{Kind: "unknown", Key: name, Origin: origin, SkipReason: "no mapping rule matches"}
}

func decode(enc Encoding, v []byte) (secrets.Secret, error) {
	switch enc {
	case EncodingBase64:
		return b64(v)
	case EncodingAuto:
		t := bytes.TrimSpace(v)
		if bytes.HasPrefix(t, []byte("-----BEGIN ")) || bytes.HasPrefix(t, []byte("ssh-")) {
			return bytes.Clone(v), nil
		}
		return b64(v)
	}
	return bytes.Clone(v), nil
}

func b64(v []byte) (secrets.Secret, error) {
	t := bytes.TrimSpace(v)
	out := make([]byte, base64.StdEncoding.DecodedLen(len(t)))
	n, err := base64.StdEncoding.Decode(out, t)
	if err != nil {
		// Never quote the value; the offset is enough to find the problem.
		return nil, errors.New("value is not valid standard base64")
	}
	return out[:n], nil
}
