package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	yaml "go.yaml.in/yaml/v3"
)

// Every sealrun configuration file (storage, proxy, runner) is read the same
// way; these helpers keep the rules in one place.

// LoadFile reads path and decodes it with decode; errors name the file and
// what kind of configuration it was meant to be.
func LoadFile[T any](path, what string, decode func(io.Reader) (T, error)) (T, error) {
	var zero T
	data, err := os.ReadFile(path)
	if err != nil {
		return zero, fmt.Errorf("read %s config: %w", what, err)
	}
	c, err := decode(bytes.NewReader(data))
	if err != nil {
		return zero, fmt.Errorf("%s config %s: %w", what, path, err)
	}
	return c, nil
}

// DecodeStrict decodes one YAML document into out. An unknown field is an
// error naming it; an empty document is an error too.
func DecodeStrict(r io.Reader, out any) error {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	if err := dec.Decode(out); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty config")
		}
		return err
	}
	return nil
}

// DecodeSection decodes a component file's storage: section with this
// package's own strict rules, defaults and validation.
func DecodeSection(n *yaml.Node) (*Config, error) {
	raw, err := yaml.Marshal(n)
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	c, err := Decode(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	return c, nil
}
