package migrate

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/sealrun/sealrun/storage"
)

// Spec is a parsed source spec such as "dir:/etc/studioml" or
// "etcd:10.0.0.1:2379,10.0.0.2:2379/custodia/keys/".
type Spec struct {
	// Scheme is dir, k8s, etcd, custodia, vault or overlay.
	Scheme string
	// Path is the directory, file, socket or config path (dir, k8s,
	// custodia, overlay), or the path under the mount (vault).
	Path string
	// Endpoints and Prefix are the etcd cluster and key prefix (etcd).
	Endpoints []string
	Prefix    string
	// Mount is the Vault KV mount (vault).
	Mount string
}

// String is the spec as written.
func (s Spec) String() string {
	switch s.Scheme {
	case "etcd":
		return "etcd:" + strings.Join(s.Endpoints, ",") + s.Prefix
	case "vault":
		if s.Path == "" {
			return "vault:" + s.Mount
		}
		return "vault:" + s.Mount + "/" + s.Path
	}
	return s.Scheme + ":" + s.Path
}

// SpecHelp documents the source specs, for --help.
const SpecHelp = `  dir:PATH            StudioML Kubernetes mount layout: PATH/message/encryption/ssh-privatekey,
                      PATH/message/passphrase/ssh-passphrase, PATH/queues/signing/<prefix>,
                      PATH/queues/response-encrypt/<prefix> (..data symlinks and "info" skipped)
  k8s:FILE            "kubectl get secret -o yaml|json" output: one Secret or a List
  etcd:ENDPOINTS/PREFIX  plain etcd values (raw or base64) under PREFIX, e.g.
                      etcd:10.0.0.1:2379,10.0.0.2:2379/custodia/keys/ ; etcd:/PREFIX uses
                      ETCDCTL_ENDPOINTS (and ETCDCTL_CACERT, _CERT, _KEY); --mapping maps key
                      patterns to kinds (default: every key a raw secret of the same name)
  custodia:SOCKET     a running Custodia (or sealrun proxy) on a unix socket; --source-auth FILE
                      holds "id: ..." and "key: ...", and "id_header: ..." and "key_header: ..."
                      if the server renamed CUSTODIA_AUTH_ID or CUSTODIA_AUTH_KEY (e.g. CUSTODIA_KEY_ID);
                      --containers a,b/c (or @FILE, one a line) names the containers to walk,
                      sub-containers included (required for Custodia, which refuses listing /secrets/)
  custodia-store:CONFIG  Custodia's own store, read directly: CONFIG is Custodia's config file
                      (custodia.conf); its SqliteStore file and EncryptedOverlay master key are
                      read from it, and every value and container is found without listing
  vault:MOUNT/PATH    Vault KV v1 or v2 (auto-detected) under PATH; VAULT_ADDR and VAULT_TOKEN
  overlay:CONFIG      another sealrun store (storage or proxy config), e.g. overlay to Vault`

// ParseSpec parses a source spec. It never contacts anything.
func ParseSpec(s string) (Spec, error) {
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok || rest == "" {
		return Spec{}, fmt.Errorf("source %q: want SCHEME:ARG (dir:, k8s:, etcd:, custodia:, custodia-store:, vault: or overlay:)", s)
	}
	sp := Spec{Scheme: scheme}
	switch scheme {
	case "dir", "k8s", "custodia", "custodia-store", "overlay":
		sp.Path = rest
	case "etcd":
		eps, prefix, err := splitEtcd(rest)
		if err != nil {
			return Spec{}, fmt.Errorf("source %q: %w", s, err)
		}
		sp.Endpoints, sp.Prefix = eps, prefix
	case "vault":
		mount, p, _ := strings.Cut(strings.Trim(rest, "/"), "/")
		if mount == "" {
			return Spec{}, fmt.Errorf("source %q: want vault:MOUNT/PATH", s)
		}
		sp.Mount, sp.Path = mount, strings.Trim(p, "/")
	default:
		return Spec{}, fmt.Errorf("source %q: unknown scheme %q (want dir, k8s, etcd, custodia, custodia-store, vault or overlay)", s, scheme)
	}
	if strings.ContainsRune(s, 0) {
		return Spec{}, fmt.Errorf("source spec contains a NUL byte")
	}
	return sp, nil
}

// splitEtcd splits "h1:2379,https://h2:2379/pre/fix/" at the first '/' that
// is not part of a "://".
func splitEtcd(rest string) ([]string, string, error) {
	i := 0
	for {
		j := strings.IndexByte(rest[i:], '/')
		if j < 0 {
			return nil, "", errors.New("want etcd:ENDPOINTS/PREFIX (the prefix starts at the first '/')")
		}
		i += j
		if i >= 1 && rest[i-1] == ':' && strings.HasPrefix(rest[i:], "//") {
			i += 2
			continue
		}
		break
	}
	var eps []string
	if i == 0 {
		return nil, rest, nil // "etcd:/prefix/": the endpoints come from ETCDCTL_ENDPOINTS
	}
	for _, e := range strings.Split(rest[:i], ",") {
		if e = strings.TrimSpace(e); e == "" {
			return nil, "", errors.New("empty etcd endpoint")
		}
		eps = append(eps, e)
	}
	return eps, rest[i:], nil
}

// SourceOptions are what opening a source may need besides its spec.
type SourceOptions struct {
	// KeyID is the key id StudioML message keys get (dir, k8s).
	KeyID string
	// Mapping maps names to kinds (etcd, vault); nil means DefaultMapping.
	Mapping *Mapping
	// AuthFile holds credentials for custodia ("id:" and "key:", and
	// "id_header:" and "key_header:" if renamed).
	AuthFile string
	// Containers are the containers a custodia source walks (nil: all,
	// from /secrets/, which only a sealrun proxy allows).
	Containers []string
	// OpenStore opens a sealrun store from a config path (overlay).
	OpenStore func(ctx context.Context, path string) (*storage.Service, error)
}

// OpenSource opens the source sp names.
func OpenSource(ctx context.Context, sp Spec, o SourceOptions) (Source, error) {
	if o.Mapping == nil {
		o.Mapping = DefaultMapping()
	}
	switch sp.Scheme {
	case "dir":
		return &DirSource{Path: sp.Path, KeyID: o.KeyID}, nil
	case "k8s":
		return &K8sSource{Path: sp.Path, KeyID: o.KeyID}, nil
	case "etcd":
		return OpenEtcdSource(ctx, sp.Endpoints, sp.Prefix, o.Mapping)
	case "custodia":
		return OpenCustodiaSource(sp.Path, o.AuthFile, o.Containers)
	case "custodia-store":
		return OpenCustodiaStoreSource(sp.Path)
	case "vault":
		return OpenVaultSource(ctx, sp.Mount, sp.Path, o.Mapping)
	case "overlay":
		if o.OpenStore == nil {
			return nil, errors.New("overlay source: no store opener")
		}
		st, err := o.OpenStore(ctx, sp.Path)
		if err != nil {
			return nil, fmt.Errorf("overlay source %s: %w", sp.Path, err)
		}
		return &StoreSource{Store: st, Owned: true}, nil
	}
	return nil, fmt.Errorf("unknown source scheme %q", sp.Scheme)
}
