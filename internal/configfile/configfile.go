// Package configfile is how every sealrun configuration file (storage,
// proxy, runner) is read: strict YAML, unknown fields rejected, errors that
// name the file. It sits below the components so none of them imports
// another's loader for it.
package configfile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	yaml "go.yaml.in/yaml/v3"
)

// Load reads path and decodes it with decode; errors name the file and
// what kind of configuration it was meant to be.
func Load[T any](path, what string, decode func(io.Reader) (T, error)) (T, error) {
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
