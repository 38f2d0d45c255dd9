package migrate

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sort"
	"strings"

	"github.com/hashicorp/vault/api"
)

// VaultSource reads a Vault KV mount (version 1 or 2, detected from the
// mount's options) below a path. A secret whose only field is "value"
// becomes the name PATH; other secrets give one name per field,
// PATH/FIELD. Names then go through the Mapping (default: raw secrets).
type VaultSource struct {
	Client  *api.Client
	Mount   string
	Path    string
	Mapping *Mapping
	// version is 1 or 2, found by Items.
	version int
}

// OpenVaultSource connects with VAULT_ADDR and VAULT_TOKEN (and the other
// standard VAULT_* variables).
func OpenVaultSource(ctx context.Context, mount, p string, m *Mapping) (*VaultSource, error) {
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("vault source: %w", cfg.Error)
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault source: %w", err)
	}
	if c.Token() == "" {
		return nil, errors.New("vault source: no token (set VAULT_TOKEN)")
	}
	return &VaultSource{Client: c, Mount: mount, Path: p, Mapping: m}, nil
}

// kvVersion asks Vault how the mount is configured. The UI mounts endpoint
// works for tokens without sys/mounts access.
func (v *VaultSource) kvVersion(ctx context.Context) (int, error) {
	s, err := v.Client.Logical().ReadWithContext(ctx, "sys/internal/ui/mounts/"+v.Mount)
	if err != nil {
		return 0, fmt.Errorf("vault source: read mount %s: %w", v.Mount, err)
	}
	if s == nil || s.Data == nil {
		return 0, fmt.Errorf("vault source: mount %s not found", v.Mount)
	}
	if t, _ := s.Data["type"].(string); t != "" && t != "kv" && t != "generic" {
		return 0, fmt.Errorf("vault source: mount %s is a %q engine, want kv", v.Mount, t)
	}
	if opts, ok := s.Data["options"].(map[string]any); ok {
		if ver, _ := opts["version"].(string); ver == "2" {
			return 2, nil
		}
	}
	return 1, nil
}

func (v *VaultSource) listPath(p string) string {
	if v.version == 2 {
		return path.Join(v.Mount, "metadata", p)
	}
	return path.Join(v.Mount, p)
}

func (v *VaultSource) dataPath(p string) string {
	if v.version == 2 {
		return path.Join(v.Mount, "data", p)
	}
	return path.Join(v.Mount, p)
}

// Items implements Source.
func (v *VaultSource) Items(ctx context.Context) ([]Item, error) {
	m := v.Mapping
	if m == nil {
		m = DefaultMapping()
	}
	ver, err := v.kvVersion(ctx)
	if err != nil {
		return nil, err
	}
	v.version = ver
	var names []string
	if err := v.walk(ctx, v.Path, &names); err != nil {
		return nil, err
	}
	var items []Item
	for _, p := range names {
		s, err := v.Client.Logical().ReadWithContext(ctx, v.dataPath(p))
		if err != nil {
			return nil, fmt.Errorf("vault source: read %s: %w", p, err)
		}
		if s == nil || s.Data == nil {
			continue // deleted since the listing
		}
		data := s.Data
		if v.version == 2 {
			d, ok := s.Data["data"].(map[string]any)
			if !ok {
				continue // the latest version is deleted
			}
			data = d
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p, v.Path), "/")
		if rel == "" {
			rel = path.Base(p)
		}
		origin := fmt.Sprintf("vault %s (kv v%d) %s", v.Mount, v.version, p)
		if sv, ok := data["value"].(string); ok && len(data) == 1 {
			items = append(items, m.item(rel, []byte(sv), origin))
			continue
		}
		fields := make([]string, 0, len(data))
		for f := range data {
			fields = append(fields, f)
		}
		sort.Strings(fields)
		for _, f := range fields {
			sv, ok := data[f].(string)
			if !ok {
				items = append(items, Item{Kind: "unknown", Key: rel + "/" + f, Origin: origin + "#" + f,
					Err: fmt.Errorf("field %s of %s is not a string", f, p)})
				continue
			}
			items = append(items, m.item(rel+"/"+f, []byte(sv), origin+"#"+f))
		}
	}
	return items, nil
}

// walk lists p recursively; a p that lists nothing is itself a secret.
func (v *VaultSource) walk(ctx context.Context, p string, out *[]string) error {
	s, err := v.Client.Logical().ListWithContext(ctx, v.listPath(p))
	if err != nil {
		return fmt.Errorf("vault source: list %s: %w", p, err)
	}
	if s == nil || s.Data == nil {
		if p != "" {
			*out = append(*out, p)
		}
		return nil
	}
	keys, _ := s.Data["keys"].([]any)
	for _, k := range keys {
		name, _ := k.(string)
		if name == "" {
			continue
		}
		child := path.Join(p, strings.TrimSuffix(name, "/"))
		if strings.HasSuffix(name, "/") {
			if err := v.walk(ctx, child, out); err != nil {
				return err
			}
			continue
		}
		*out = append(*out, child)
	}
	return nil
}

// Close implements Source.
func (v *VaultSource) Close() error { return nil }
