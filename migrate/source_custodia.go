package migrate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"

	yaml "go.yaml.in/yaml/v3"

	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// CustodiaSource reads every value from a running Custodia server (or a
// sealrun proxy, which speaks the same API) over its unix socket. Values
// become raw secrets under their Custodia names; a sealrun proxy's typed
// models (names sealrun/<kind>/<key>) become those models again.
type CustodiaSource struct {
	Client *client.Client
	// Registry decodes typed models; nil means secrets.Default().
	Registry *secrets.Registry
	// Containers are the containers to walk, recursively ("a", "b/c"); none
	// means the whole tree from /secrets/ (a sealrun proxy only: Custodia
	// refuses that listing).
	Containers []string
}

// custodiaAuth is the --source-auth (or --to-auth) file: the API id and key
// and, when the server renamed them, the headers that carry them (Custodia's
// SimpleAuthKeys header names; a sealrun proxy's auth.id_header and
// auth.key_header).
type custodiaAuth struct {
	ID        string        `yaml:"id"`
	Key       client.APIKey `yaml:"key"`
	IDHeader  string        `yaml:"id_header"`  // default CUSTODIA_AUTH_ID
	KeyHeader string        `yaml:"key_header"` // default CUSTODIA_AUTH_KEY; CPD-101 uses CUSTODIA_KEY_ID
}

// OpenCustodiaSource connects to socket with the credentials in authFile.
func OpenCustodiaSource(socket, authFile string, containers []string) (*CustodiaSource, error) {
	c, err := dialCustodia(socket, authFile)
	if err != nil {
		return nil, fmt.Errorf("custodia source: %w", err)
	}
	for _, ct := range containers {
		if err := driver.ValidateKey(ct); err != nil {
			return nil, fmt.Errorf("custodia source: container %q: %w", ct, err)
		}
	}
	return &CustodiaSource{Client: c, Containers: containers}, nil
}

// ParseContainers parses --containers: "a,b/c", or "@FILE" with one
// container per line ("#" comments and blank lines ignored). Slashes around
// a name are dropped ("/secrets/a/" is not accepted: name the container).
func ParseContainers(s string) ([]string, error) {
	var parts []string
	if file, ok := strings.CutPrefix(s, "@"); ok {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--containers: %w", err)
		}
		parts = strings.Split(string(data), "\n")
	} else {
		parts = strings.Split(s, ",")
	}
	var out []string
	for _, p := range parts {
		p = strings.Trim(p, "/ \t\r\n\v\f") // both, in any order: " /a/ " is a
		if p == "" || strings.HasPrefix(p, "#") {
			continue
		}
		if strings.HasPrefix(p, "@") {
			return nil, fmt.Errorf("--containers: %q: a leading @ names a file; a container cannot start with @ here", p)
		}
		if strings.HasPrefix(p, "secrets/") {
			return nil, fmt.Errorf("--containers: %q: name the container relative to /secrets/ (e.g. %q)", p, strings.TrimPrefix(p, "secrets/"))
		}
		if err := driver.ValidateKey(p); err != nil {
			return nil, fmt.Errorf("--containers: %q: %w", p, err)
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, errors.New("--containers: no container named")
	}
	return out, nil
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

// Items implements Source. With Containers it walks each named container
// (Custodia lists a container's whole subtree, sub-containers as "sub/");
// without, it lists /secrets/, which a sealrun proxy allows and Custodia 0.6
// refuses. Containers, empty ones included, are items too, so the
// destination gets them back.
func (c *CustodiaSource) Items(ctx context.Context) ([]Item, error) {
	reg := c.Registry
	if reg == nil {
		reg = secrets.Default()
	}
	roots := c.Containers
	if len(roots) == 0 {
		roots = []string{""}
	}
	seen := map[string]bool{}
	var items []Item
	addContainer := func(p string) {
		if p == "sealrun" || strings.HasPrefix(p, "sealrun/") {
			return // a sealrun proxy's typed models: not the API's containers
		}
		// A container's parents exist at the source too: Custodia creates none
		// implicitly.
		parts := strings.Split(p, "/")
		for i := 1; i <= len(parts); i++ {
			name := strings.Join(parts[:i], "/")
			if !seen[name+"/"] {
				seen[name+"/"] = true
				items = append(items, Item{Kind: secrets.KindContainer, Key: name, Origin: "custodia /secrets/" + name + "/",
					Model: &secrets.Container{Path: name}})
			}
		}
	}
	for _, root := range roots {
		names, err := c.Client.List(ctx, root)
		if err != nil {
			return nil, custodiaError("list /secrets/"+root+pathSlash(root), err, root == "")
		}
		if root != "" {
			addContainer(root)
		}
		for _, rel := range names {
			name := path.Join(root, rel)
			if strings.HasSuffix(rel, "/") {
				addContainer(name)
				continue
			}
			if seen[name] {
				continue // also below another container named
			}
			seen[name] = true
			v, err := c.Client.GetFresh(ctx, name)
			if errors.Is(err, client.ErrNotFound) {
				continue // deleted since the listing
			}
			if err != nil {
				return nil, custodiaError("get /secrets/"+name, err, false)
			}
			items = append(items, custodiaItem(reg, "custodia /secrets/"+name, name, v))
		}
	}
	return items, nil
}

func pathSlash(p string) string {
	if p == "" {
		return ""
	}
	return "/"
}

// custodiaError names Custodia and says what to do, without the client's
// "secrets proxy" wording, which would mislead here.
func custodiaError(what string, err error, root bool) error {
	var ce *client.Error
	if !errors.As(err, &ce) {
		return fmt.Errorf("custodia source: %s: %w", what, err)
	}
	hint := ""
	switch {
	case errors.Is(ce, client.ErrUnauthorized):
		// A sealrun proxy marks the 403 of a refused credential; Custodia's
		// 403s are unmarked, so for Custodia the cases below decide.
		hint = "; the source refused the credential: check the id, key and header names (id_header, key_header) in --source-auth"
	case ce.Status == 403 && root:
		hint = "; Custodia refuses listing /secrets/ itself: name the containers to walk with --containers a,b/c (or --containers @FILE)"
	case ce.Status == 403:
		hint = "; check the id, key and header names in --source-auth, and that Custodia's authz allows them this path"
	case ce.Status == 404:
		hint = "; no such container at the source (check --containers)"
	}
	msg := fmt.Sprintf("custodia source: Custodia answered %d to %s%s", ce.Status, what, hint)
	if body := strings.TrimSpace(ce.Msg); body != "" && len(body) < 300 && !strings.Contains(body, "<") {
		msg += " (it said: " + body + ")" // an error text, never a value; not an HTML page
	}
	if kind := errors.Unwrap(ce); kind != nil {
		return fmt.Errorf("%s: %w", msg, kind)
	}
	return errors.New(msg)
}

// custodiaItem is the item for a value Custodia holds under name: a raw
// secret, or the typed model a sealrun proxy stores as sealrun/<kind>/<key>.
func custodiaItem(reg *secrets.Registry, origin, name string, v []byte) Item {
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
// Containers are left at the source: values below them may remain.
func (c *CustodiaSource) DeleteItem(ctx context.Context, it Item) error {
	if it.Kind == secrets.KindContainer {
		return nil
	}
	return c.Client.Delete(ctx, strings.TrimPrefix(it.Origin, "custodia /secrets/"))
}

// Close implements Source.
func (c *CustodiaSource) Close() error { c.Client.Close(); return nil }
