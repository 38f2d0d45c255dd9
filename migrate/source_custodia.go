package migrate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/secrets"
)

// CustodiaSource reads every value from a running Custodia server (or a
// sealrun proxy, which speaks the same API) over its unix socket. Values
// become raw secrets under their Custodia names; a sealrun proxy's typed
// models (names sealrun/<kind>/<key>) become those models again.
type CustodiaSource struct {
	Client *client.Client
	// Registry decodes typed models; nil means secrets.Default().
	Registry *secrets.Registry
}

// custodiaAuth is the --source-auth (or --to-auth) file: the API id and key
// and, when the server renamed them, the headers that carry them (Custodia's
// SimpleAuthKeys header names; a sealrun proxy's auth.id_header and
// auth.key_header).
type custodiaAuth struct {
	ID        string `yaml:"id"`
	Key       string `yaml:"key"`
	IDHeader  string `yaml:"id_header"`  // default CUSTODIA_AUTH_ID
	KeyHeader string `yaml:"key_header"` // default CUSTODIA_AUTH_KEY; CPD-101 uses CUSTODIA_KEY_ID
}

// OpenCustodiaSource connects to socket with the credentials in authFile.
func OpenCustodiaSource(socket, authFile string) (*CustodiaSource, error) {
	c, err := dialCustodia(socket, authFile)
	if err != nil {
		return nil, fmt.Errorf("custodia source: %w", err)
	}
	return &CustodiaSource{Client: c}, nil
}

// OpenProxyStore connects to a proxy (or Custodia) as a destination, with
// the credentials in authFile.
func OpenProxyStore(socket, authFile string, reg *secrets.Registry) (*ProxyStore, error) {
	c, err := dialCustodia(socket, authFile)
	if err != nil {
		return nil, fmt.Errorf("proxy destination: %w", err)
	}
	return &ProxyStore{Client: c, Reg: reg}, nil
}

// dialCustodia makes an API client from an auth file (YAML id: and key:,
// optionally id_header: and key_header:).
func dialCustodia(socket, authFile string) (*client.Client, error) {
	if authFile == "" {
		return nil, errors.New("an auth file (YAML with id: and key:, optionally id_header: and key_header:) is required")
	}
	data, err := os.ReadFile(authFile)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var a custodiaAuth
	if err := dec.Decode(&a); err != nil || a.ID == "" || a.Key == "" {
		// Never echo the file: it holds a key.
		return nil, fmt.Errorf("%s must be YAML with id: and key: (and optionally id_header: and key_header:)", authFile)
	}
	return client.New(client.Config{Socket: socket, ID: a.ID, Key: a.Key, IDHeader: a.IDHeader, KeyHeader: a.KeyHeader})
}

// Items implements Source.
func (c *CustodiaSource) Items(ctx context.Context) ([]Item, error) {
	reg := c.Registry
	if reg == nil {
		reg = secrets.Default()
	}
	names, err := c.Client.List(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("custodia source: list /secrets/: %w", err)
	}
	var items []Item
	for _, name := range names {
		if strings.HasSuffix(name, "/") {
			continue // a container: recreated from the names below it
		}
		v, err := c.Client.GetFresh(ctx, name)
		if errors.Is(err, client.ErrNotFound) {
			continue // deleted since the listing
		}
		if err != nil {
			return nil, fmt.Errorf("custodia source: get %s: %w", name, err)
		}
		items = append(items, c.item(reg, name, v))
	}
	return items, nil
}

func (c *CustodiaSource) item(reg *secrets.Registry, name string, v []byte) Item {
	origin := "custodia /secrets/" + name
	if rest, ok := strings.CutPrefix(name, "sealrun/"); ok {
		if kind, key, ok := strings.Cut(rest, "/"); ok {
			it := Item{Kind: kind, Key: key, Origin: origin}
			m, err := reg.New(kind, key)
			if err != nil {
				it.Err = fmt.Errorf("typed name of unknown kind %q", kind)
				return it
			}
			if err := json.Unmarshal(v, m); err != nil || m.Key() != key {
				it.Err = fmt.Errorf("value under %s is not a %s model", name, kind)
				return it
			}
			it.Model = m
			return it
		}
	}
	return Item{Kind: secrets.KindRaw, Key: name, Origin: origin, Model: &secrets.Raw{Name: name, Value: v}}
}

// DeleteItem implements Deleter. The Custodia API has no conditional
// delete; the value was verified in the destination just before.
func (c *CustodiaSource) DeleteItem(ctx context.Context, it Item) error {
	return c.Client.Delete(ctx, strings.TrimPrefix(it.Origin, "custodia /secrets/"))
}

// Close implements Source.
func (c *CustodiaSource) Close() error { c.Client.Close(); return nil }
