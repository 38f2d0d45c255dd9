package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/sealrun/sealrun/proxy"
	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// modelStore is what "sealrun secrets put|get|ls|rm" act through: the
// storage service itself (--config, on the proxy's host while it is
// stopped, or with an external etcd), or a running proxy (--socket), which
// is the only way in while a proxy owns an embedded etcd.
type modelStore interface {
	Registry() *secrets.Registry
	Put(ctx context.Context, m secrets.Model, ifAbsent bool) error
	Get(ctx context.Context, m secrets.Model) error
	List(ctx context.Context, kind, prefix string) ([]string, error)
	Delete(ctx context.Context, kind, key string) error
	Close()
}

type serviceStore struct{ *storage.Service }

func (s serviceStore) Put(ctx context.Context, m secrets.Model, ifAbsent bool) error {
	_, err := s.Service.Put(ctx, m, driver.PutOptions{IfAbsent: ifAbsent})
	return err
}

func (s serviceStore) Get(ctx context.Context, m secrets.Model) error {
	_, err := s.Service.Get(ctx, m)
	return err
}

func (s serviceStore) Delete(ctx context.Context, kind, key string) error {
	return s.Service.Delete(ctx, kind, key, driver.DeleteOptions{})
}

func (s serviceStore) Close() { s.Service.Close() }

// proxyStore maps models onto the proxy's namespace: raw values are Custodia
// names, other kinds live under sealrun/<kind>/.
type proxyStore struct {
	c   *client.Client
	reg *secrets.Registry
}

func (p proxyStore) Registry() *secrets.Registry { return p.reg }
func (p proxyStore) Close()                      { p.c.Close() }

func proxyName(kind, key string) string {
	if kind == secrets.KindRaw {
		return key
	}
	return path.Join("sealrun", kind, key)
}

func (p proxyStore) Put(ctx context.Context, m secrets.Model, ifAbsent bool) error {
	var value []byte
	if raw, ok := m.(*secrets.Raw); ok {
		value = raw.Value.Reveal()
		// Custodia needs the containers a name lives in.
		parts := strings.Split(m.Key(), "/")
		for i := 1; i < len(parts); i++ {
			if err := p.c.CreateContainer(ctx, strings.Join(parts[:i], "/")); err != nil {
				return err
			}
		}
	} else {
		b, err := json.Marshal(m)
		if err != nil {
			return err
		}
		value = b
	}
	name := proxyName(m.Kind(), m.Key())
	// Create, or replace in one compare-and-set write: a runner reloading
	// its keys meanwhile sees the old value or the new, never none (a
	// delete + create would leave a gap).
	for range 3 {
		err := p.c.Put(ctx, name, value)
		if !errors.Is(err, client.ErrConflict) || ifAbsent {
			return err
		}
		if err = p.c.Replace(ctx, name, value); !errors.Is(err, client.ErrChanged) {
			return err
		}
		// Deleted or changed between the two: start over.
	}
	return fmt.Errorf("%s changed concurrently three times while replacing it; try again", name)
}

func (p proxyStore) Get(ctx context.Context, m secrets.Model) error {
	v, err := p.c.GetFresh(ctx, proxyName(m.Kind(), m.Key()))
	if err != nil {
		return err
	}
	if raw, ok := m.(*secrets.Raw); ok {
		raw.Value = secrets.Secret(v)
		return nil
	}
	if err := json.Unmarshal(v, m); err != nil {
		return fmt.Errorf("proxy returned an invalid %s model", m.Kind())
	}
	return nil
}

func (p proxyStore) List(ctx context.Context, kind, prefix string) ([]string, error) {
	base := proxyName(kind, prefix)
	if kind != secrets.KindRaw && prefix == "" {
		base = path.Join("sealrun", kind)
	}
	names, err := p.c.List(ctx, base)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range names {
		if strings.HasSuffix(n, "/") {
			continue // a container, not a value
		}
		if prefix != "" {
			n = prefix + "/" + n
		}
		out = append(out, n)
	}
	return out, nil
}

func (p proxyStore) Delete(ctx context.Context, kind, key string) error {
	return p.c.Delete(ctx, proxyName(kind, key))
}

// openModelStore opens the store the flags name: the proxy on pc.Socket if
// set, else the configuration file's storage.
func openModelStore(ctx context.Context, configPath string, pc client.Config) (modelStore, error) {
	if pc.Socket != "" {
		c, err := client.New(pc)
		if err != nil {
			return nil, err
		}
		return proxyStore{c: c, reg: proxy.Registry()}, nil
	}
	svc, err := openStore(ctx, configPath)
	if err != nil {
		return nil, err
	}
	return serviceStore{svc}, nil
}
