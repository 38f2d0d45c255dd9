package migrate

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	yaml "go.yaml.in/yaml/v3"
)

// K8sSource reads `kubectl get secret -o yaml` or `-o json` output: one
// Secret, a List of them, or several YAML documents. Values come from base64
// `data` and plain `stringData` (which wins, as in Kubernetes). Data keys map
// as in the mount layout: ssh-privatekey, ssh-passphrase (ssh-publickey is
// skipped); every other key is a queue prefix, a signing key when the
// Secret's name contains "signing" or the value is an ssh-ed25519 line, a
// response key when the name contains "response" or "report" or the value is
// an RSA public key.
type K8sSource struct {
	Path  string
	KeyID string // default DefaultKeyID
}

// Items implements Source.
func (k *K8sSource) Items(ctx context.Context) ([]Item, error) {
	f, err := os.Open(k.Path)
	if err != nil {
		return nil, fmt.Errorf("k8s source: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 64<<20+1))
	if err != nil {
		return nil, fmt.Errorf("k8s source: %w", err)
	}
	if len(data) > 64<<20 {
		return nil, fmt.Errorf("k8s source %s: larger than 64 MiB", k.Path)
	}
	keyID := k.KeyID
	if keyID == "" {
		keyID = DefaultKeyID
	}
	return ParseK8sSecrets(data, keyID)
}

// Close implements Source.
func (k *K8sSource) Close() error { return nil }

// k8sObject is the part of a Secret or List the import reads; other fields
// (metadata.annotations, managedFields...) are ignored.
type k8sObject struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string `yaml:"name"`
		Namespace string `yaml:"namespace"`
	} `yaml:"metadata"`
	Type       string            `yaml:"type"`
	Data       map[string]string `yaml:"data"`
	StringData map[string]string `yaml:"stringData"`
	Items      []k8sObject       `yaml:"items"`
}

// ParseK8sSecrets parses kubectl output (YAML or JSON) into items. Errors
// name documents, Secrets and data keys, never values.
func ParseK8sSecrets(data []byte, keyID string) ([]Item, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var secrets []k8sObject
	for doc := 0; ; doc++ {
		var o k8sObject
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// yaml.v3 errors quote line numbers and types, not scalar values.
			return nil, fmt.Errorf("k8s source: document %d is not a Kubernetes object: %s", doc+1, yamlErr(err))
		}
		switch o.Kind {
		case "Secret":
			secrets = append(secrets, o)
		case "List", "SecretList":
			for i, it := range o.Items {
				if it.Kind != "" && it.Kind != "Secret" {
					return nil, fmt.Errorf("k8s source: document %d item %d is a %q, want Secret", doc+1, i, it.Kind)
				}
				secrets = append(secrets, it)
			}
		case "":
			if o.Data == nil && o.StringData == nil && o.Items == nil {
				continue // an empty document
			}
			return nil, fmt.Errorf("k8s source: document %d has no kind (want Secret or List)", doc+1)
		default:
			return nil, fmt.Errorf("k8s source: document %d is a %q, want Secret or List", doc+1, o.Kind)
		}
	}
	if len(secrets) == 0 {
		return nil, errors.New("k8s source: no Secret found (want `kubectl get secret NAME -o yaml` output)")
	}
	var items []Item
	for _, s := range secrets {
		items = append(items, secretItems(s, keyID)...)
	}
	return items, nil
}

// yamlErr keeps yaml's message but cuts anything quoted after a colon that
// might be input, keeping line information.
func yamlErr(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, "cannot unmarshal"); i >= 0 {
		if j := strings.Index(msg[i:], "`"); j >= 0 {
			return msg[:i+j] + "(value elided)"
		}
	}
	return msg
}

func secretItems(s k8sObject, keyID string) []Item {
	name := s.Metadata.Name
	if s.Metadata.Namespace != "" {
		name = s.Metadata.Namespace + "/" + name
	}
	values := map[string][]byte{}
	var items []Item
	for k, v := range s.Data {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
		if err != nil {
			items = append(items, Item{Kind: "unknown", Key: k, Origin: origin(name, "data", k),
				Err: fmt.Errorf("secret %s data[%s] is not valid base64", name, k)})
			continue
		}
		values[k] = b
	}
	for k, v := range s.StringData {
		values[k] = []byte(v)
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	lname := strings.ToLower(s.Metadata.Name)
	for _, k := range keys {
		v := values[k]
		var r role
		switch {
		case k == studioInfo:
			continue
		case k == studioPrivateKey:
			r = rolePrivateKey
		case k == studioPublicKey:
			r = rolePublicKey
		case k == studioPassphrase:
			r = rolePassphrase
		case strings.Contains(lname, "signing"):
			r = roleSigning
		case strings.Contains(lname, "response") || strings.Contains(lname, "report"):
			r = roleResponse
		default:
			r = sniff(v)
		}
		items = append(items, studioItem(r, k, keyID, origin(name, "data", k), v))
	}
	return items
}

func origin(secret, field, key string) string {
	return fmt.Sprintf("secret %s %s[%s]", secret, field, key)
}
