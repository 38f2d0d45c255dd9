// Package configcheck loads sealrun's configuration files with the loaders
// the components themselves use, and checks that a file writes out every
// option (how the shipped examples and defaults are kept complete). It backs
// "sealrun config check" and the deployment tests. It is the CLI's: it
// imports the components (proxy, runner), so it cannot sit below them in
// internal/.
package configcheck

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	yaml "go.yaml.in/yaml/v3"

	"github.com/sealrun/sealrun/proxy"
	"github.com/sealrun/sealrun/runner"
	storageconfig "github.com/sealrun/sealrun/storage/config"
)

// Kinds are the configuration files sealrun reads, in detection order.
var Kinds = []string{"proxy", "runner", "storage"}

// DetectKind tells the three file kinds apart by their top-level keys.
func DetectKind(data []byte) (string, error) {
	var top map[string]yaml.Node
	if err := yaml.Unmarshal(data, &top); err != nil {
		return "", fmt.Errorf("not a YAML mapping: %w", err)
	}
	has := func(k string) bool { _, ok := top[k]; return ok }
	switch {
	case has("amqp") || has("queues"):
		return "runner", nil
	case has("storage"):
		return "proxy", nil
	case has("secrets") || has("state"):
		return "storage", nil
	}
	return "", errors.New("cannot tell the kind (no amqp, queues, storage, secrets or state key); pass --kind")
}

// Check loads data with kind's real loader and, with complete, also
// requires every option to be present.
func Check(kind, path string, data []byte, complete bool) error {
	var typ reflect.Type
	var err error
	switch kind {
	case "proxy":
		_, err = proxy.DecodeConfig(strings.NewReader(string(data)))
		typ = reflect.TypeFor[proxy.Config]()
	case "runner":
		_, err = runner.DecodeConfig(strings.NewReader(string(data)))
		typ = reflect.TypeFor[runner.Config]()
	case "storage":
		_, err = storageconfig.Decode(strings.NewReader(string(data)))
		typ = reflect.TypeFor[storageconfig.Config]()
	default:
		return fmt.Errorf("unknown kind %q: want %s", kind, strings.Join(Kinds, ", "))
	}
	if err != nil {
		return fmt.Errorf("%s (%s config): %w", path, kind, err)
	}
	if complete {
		var doc yaml.Node
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if missing := missingFields(&doc, typ, ""); len(missing) > 0 {
			return fmt.Errorf("%s (%s config): not written out: %s", path, kind, strings.Join(missing, ", "))
		}
	}
	return nil
}

// embeddedSections are yaml.Node fields another package decodes; the
// completeness check follows them into that package's type.
var embeddedSections = map[string]reflect.Type{
	"storage": reflect.TypeFor[storageconfig.Config](),
}

// missingFields lists the options of t that node does not write out. A
// pointer field (an optional section such as tls, or an alternative such
// as secrets.vault next to secrets.overlay) may be absent; when present,
// its own options must all be there. The loaders already reject unknown
// names, so only absences are checked here.
func missingFields(node *yaml.Node, t reflect.Type, path string) []string {
	if node.Kind == yaml.DocumentNode && len(node.Content) == 1 {
		node = node.Content[0]
	}
	if node.Kind != yaml.MappingNode || t.Kind() != reflect.Struct {
		return nil
	}
	values := map[string]*yaml.Node{}
	for i := 0; i+1 < len(node.Content); i += 2 {
		values[node.Content[i].Value] = node.Content[i+1]
	}
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "" || name == "-" {
			continue
		}
		full := strings.TrimPrefix(path+"."+name, ".")
		v, ok := values[name]
		if !ok {
			if f.Type.Kind() != reflect.Pointer {
				out = append(out, full)
			}
			continue
		}
		ft := f.Type
		if ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft == reflect.TypeFor[yaml.Node]() {
			if sub, ok := embeddedSections[name]; ok {
				out = append(out, missingFields(v, sub, full)...)
			}
			continue
		}
		out = append(out, missingFields(v, ft, full)...)
	}
	return out
}
