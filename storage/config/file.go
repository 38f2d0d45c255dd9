package config

import (
	"bytes"
	"fmt"

	yaml "go.yaml.in/yaml/v3"
)

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
