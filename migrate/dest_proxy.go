package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// ProxyStore is a running sealrun secrets proxy (or Custodia) as a
// migration destination, through its Custodia API: raw secrets under their
// names, typed models as JSON under sealrun/<kind>/<key> (the proxy's typed
// namespace). The API is create-only and has no revisions, so creates are
// compare-and-set (a PUT fails if the name exists) but updates are refused:
// an item that differs in the destination fails with a reason instead of
// being replaced non-atomically. Checkpoints need the state store, which the
// API does not expose: a rerun still resumes, by re-planning.
type ProxyStore struct {
	Client *client.Client
	Reg    *secrets.Registry
}

// errNoUpdate is why an update through the Custodia API is refused.
var errNoUpdate = errors.New("the Custodia API cannot replace a value with compare-and-set; delete it first or migrate with --to CONFIG")

// Registry implements Store.
func (p *ProxyStore) Registry() *secrets.Registry { return p.Reg }

func proxyName(kind, key string) string {
	if kind == secrets.KindRaw {
		return key
	}
	return path.Join("sealrun", kind, key)
}

// mapErr gives client errors the storage codes Apply decides on.
func mapErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, client.ErrNotFound):
		return fmt.Errorf("%w: %w", driver.ErrNotFound, err)
	case errors.Is(err, client.ErrConflict):
		return fmt.Errorf("%w: %w", driver.ErrConflict, err)
	}
	return err
}

// Put implements Store: IfAbsent creates; anything else is refused.
func (p *ProxyStore) Put(ctx context.Context, m secrets.Model, o driver.PutOptions) (int64, error) {
	if !o.IfAbsent {
		return 0, fmt.Errorf("put %s/%s: %w", m.Kind(), m.Key(), errNoUpdate)
	}
	if m.Kind() == secrets.KindContainer {
		// The API's own containers, not a typed model.
		return 1, p.createContainers(ctx, strings.Split(m.Key(), "/"), true)
	}
	var value []byte
	name := proxyName(m.Kind(), m.Key())
	if raw, ok := m.(*secrets.Raw); ok {
		value = raw.Value.Reveal()
	} else {
		b, err := json.Marshal(m)
		if err != nil {
			return 0, err
		}
		value = b
	}
	// Custodia needs every container a name lives in; "exists" is fine.
	parts := strings.Split(name, "/")
	if err := p.createContainers(ctx, parts[:len(parts)-1], false); err != nil {
		return 0, err
	}
	// A lost or unconfirmed answer stays an error here: Apply reads the
	// value back to learn whether the write made it.
	return 1, mapErr(p.Client.Put(ctx, name, value))
}

// createContainers creates each container along parts; with last, the
// full path must be new (a conflict there is the caller's).
func (p *ProxyStore) createContainers(ctx context.Context, parts []string, last bool) error {
	for i := 1; i <= len(parts); i++ {
		name := strings.Join(parts[:i], "/")
		err := p.Client.CreateContainer(ctx, name)
		if errors.Is(err, client.ErrConflict) && (!last || i < len(parts)) {
			continue
		}
		if err != nil {
			return fmt.Errorf("create container %s: %w", name, mapErr(err))
		}
	}
	return nil
}

// Get implements Store; revisions are always 1 (the API has none).
func (p *ProxyStore) Get(ctx context.Context, m secrets.Model) (int64, error) {
	if m.Kind() == secrets.KindContainer {
		if _, err := p.Client.List(ctx, m.Key()); err != nil {
			return 0, mapErr(err)
		}
		return 1, nil
	}
	v, err := p.Client.GetFresh(ctx, proxyName(m.Kind(), m.Key()))
	if err != nil {
		return 0, mapErr(err)
	}
	if raw, ok := m.(*secrets.Raw); ok {
		raw.Value = secrets.Secret(v)
		return 1, nil
	}
	if err := json.Unmarshal(v, m); err != nil {
		return 0, fmt.Errorf("proxy holds an invalid %s model under %s: %w", m.Kind(), m.Key(), driver.ErrIntegrity)
	}
	return 1, nil
}

// Delete implements Store.
func (p *ProxyStore) Delete(ctx context.Context, kind, key string, _ driver.DeleteOptions) error {
	return mapErr(p.Client.Delete(ctx, proxyName(kind, key)))
}

// List implements Store.
func (p *ProxyStore) List(ctx context.Context, kind, _ string) ([]string, error) {
	base := ""
	if kind == secrets.KindContainer {
		names, err := p.Client.List(ctx, "")
		if err != nil {
			return nil, err
		}
		var out []string
		for _, n := range names {
			if c, ok := strings.CutSuffix(n, "/"); ok && c != "sealrun" && !strings.HasPrefix(c, "sealrun/") {
				out = append(out, c)
			}
		}
		return out, nil
	}
	if kind != secrets.KindRaw {
		base = path.Join("sealrun", kind)
	}
	names, err := p.Client.List(ctx, base)
	if errors.Is(err, client.ErrNotFound) {
		return nil, nil // no container yet: nothing of this kind
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range names {
		if strings.HasSuffix(n, "/") || (kind == secrets.KindRaw && strings.HasPrefix(n, "sealrun/")) {
			continue
		}
		out = append(out, n)
	}
	return out, nil
}
