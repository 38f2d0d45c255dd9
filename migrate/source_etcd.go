package migrate

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	storageconfig "github.com/sealrun/sealrun/storage/config"
)

// EtcdSource reads plain (unencrypted) values under a prefix of an etcd v3
// cluster, e.g. keys a deployment stored in base64, and maps their names to
// models with a Mapping.
type EtcdSource struct {
	Client  *clientv3.Client
	Prefix  string
	Mapping *Mapping
	owned   bool
}

// OpenEtcdSource dials endpoints; none means the cluster etcdctl's
// environment names (ETCDCTL_ENDPOINTS, and its TLS variables).
func OpenEtcdSource(ctx context.Context, endpoints []string, prefix string, m *Mapping) (*EtcdSource, error) {
	cfg := clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), Context: ctx}
	if len(endpoints) == 0 {
		env, err := storageconfig.EtcdFromEnv(os.LookupEnv)
		if err != nil {
			return nil, fmt.Errorf("etcd source: %w", err)
		}
		if env.Endpoints == nil {
			return nil, fmt.Errorf("etcd source etcd:%s names no endpoints and ETCDCTL_ENDPOINTS is unset: write etcd:HOST:2379,HOST2:2379%s or set ETCDCTL_ENDPOINTS", prefix, prefix)
		}
		cfg.Endpoints = env.Endpoints
		if t := env.TLS; t != nil {
			tc, err := transport.TLSInfo{TrustedCAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile}.ClientConfig()
			if err != nil {
				return nil, fmt.Errorf("etcd source: ETCDCTL_CACERT/CERT/KEY: %w", err)
			}
			cfg.TLS = tc
		}
		endpoints = env.Endpoints
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd source: connect to %v: %w", endpoints, err)
	}
	return &EtcdSource{Client: cli, Prefix: prefix, Mapping: m, owned: true}, nil
}

// pageSize bounds one range read, so a large keyspace is not one huge reply.
const pageSize = 1000

// Items implements Source. Pages are read at one revision, so the listing is
// a consistent snapshot even while the source changes.
func (e *EtcdSource) Items(ctx context.Context) ([]Item, error) {
	m := e.Mapping
	if m == nil {
		m = DefaultMapping()
	}
	var items []Item
	end := clientv3.GetPrefixRangeEnd(e.Prefix)
	key, rev := e.Prefix, int64(0)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := e.Client.Get(ctx, key, opts...)
		if err != nil {
			return nil, fmt.Errorf("etcd source: list %q: %w", e.Prefix, err)
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			name := strings.TrimPrefix(string(kv.Key), e.Prefix)
			it := m.item(name, kv.Value, "etcd "+string(kv.Key))
			it.revision = kv.ModRevision
			items = append(items, it)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	return items, nil
}

// DeleteItem implements Deleter: the key is deleted only if it is unchanged
// since it was read, so a value written meanwhile is not lost.
func (e *EtcdSource) DeleteItem(ctx context.Context, it Item) error {
	key := strings.TrimPrefix(it.Origin, "etcd ")
	resp, err := e.Client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", it.revision)).
		Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("delete source key %s: %w", key, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("source key %s changed since it was read; not deleted", key)
	}
	return nil
}

// Close implements Source.
func (e *EtcdSource) Close() error {
	if e.owned {
		return e.Client.Close()
	}
	return nil
}
