// Package config reads sealrun's storage configuration (YAML, strictly
// decoded) and opens a storage.Service from it, starting an embedded etcd
// when no endpoints are configured.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config is the storage part of sealrun's configuration.
type Config struct {
	Secrets Secrets `yaml:"secrets"`
	State   State   `yaml:"state"`
}

// Secrets selects the backend for secret models.
type Secrets struct {
	// Backend is "overlay" or "vault".
	Backend string   `yaml:"backend"`
	Overlay *Overlay `yaml:"overlay"`
	Vault   *Vault   `yaml:"vault"`
}

// Overlay is the encrypting overlay (Custodia's EncryptedOverlay format).
type Overlay struct {
	// Store is where ciphertexts go: "etcd" (the state etcd, under Prefix)
	// or "memory" (tests only).
	Store string `yaml:"store"`
	// Prefix is the etcd prefix for ciphertexts (default "/sealrun/secrets/").
	Prefix string `yaml:"prefix"`
	// MasterKey is the path of a Custodia-format JWK key file.
	MasterKey string `yaml:"master_key"`
	// Autogen creates MasterKey (mode 0600) when absent.
	Autogen bool `yaml:"autogen"`
	// Enctype must be "A256CBC-HS512" (the default), Custodia's default.
	Enctype string `yaml:"enctype"`
	// Protection is "pinning" (default), "migrate" or "encrypt".
	Protection string `yaml:"protection"`
}

// Vault is a Vault KV v2 backend.
type Vault struct {
	// Address defaults to $VAULT_ADDR.
	Address string `yaml:"address"`
	// Mount is the KV v2 mount (default "secret").
	Mount string `yaml:"mount"`
	// Prefix is the path under the mount (default "sealrun").
	Prefix string `yaml:"prefix"`
	// TokenFile holds the token; empty means $VAULT_TOKEN.
	TokenFile string `yaml:"token_file"`
	// PollInterval is how often watches poll (default 1s).
	PollInterval time.Duration `yaml:"poll_interval"`
}

// State selects the backend for plain models.
type State struct {
	// Backend is "etcd" or "memory".
	Backend string `yaml:"backend"`
	Etcd    *Etcd  `yaml:"etcd"`
}

// Etcd is an etcd connection. With no Endpoints, sealrun runs an embedded
// single-node etcd with its data in DataDir.
type Etcd struct {
	Endpoints   []string      `yaml:"endpoints"`
	DataDir     string        `yaml:"data_dir"`
	Prefix      string        `yaml:"prefix"`
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// Timeout bounds each storage call (default 10s).
	Timeout      time.Duration `yaml:"timeout"`
	TLS          *TLS          `yaml:"tls"`
	Username     string        `yaml:"username"`
	PasswordFile string        `yaml:"password_file"`
}

// TLS are client TLS files for etcd.
type TLS struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	c, err := Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Decode strictly decodes one YAML document (an unknown field is an error
// naming it), applies defaults and validates.
func Decode(r io.Reader) (*Config, error) {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty config")
		}
		return nil, err
	}
	c.setDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) setDefaults() {
	if c.State.Backend == "etcd" {
		if c.State.Etcd == nil {
			c.State.Etcd = &Etcd{}
		}
		e := c.State.Etcd
		e.Prefix = orDefault(e.Prefix, "/sealrun/state/")
		if e.DialTimeout == 0 {
			e.DialTimeout = 5 * time.Second
		}
	}
	if o := c.Secrets.Overlay; o != nil {
		o.Prefix = orDefault(o.Prefix, "/sealrun/secrets/")
		o.Enctype = orDefault(o.Enctype, "A256CBC-HS512")
		o.Protection = orDefault(o.Protection, "pinning")
	}
	if v := c.Secrets.Vault; v != nil {
		v.Mount = orDefault(v.Mount, "secret")
		v.Prefix = orDefault(v.Prefix, "sealrun")
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Validate checks that the chosen backends are configured consistently.
func (c *Config) Validate() error {
	switch c.State.Backend {
	case "etcd":
		e := c.State.Etcd
		if len(e.Endpoints) == 0 && e.DataDir == "" {
			return errors.New("state.etcd: set endpoints for an external etcd, or data_dir for the embedded one")
		}
		if !strings.HasSuffix(e.Prefix, "/") {
			return fmt.Errorf("state.etcd.prefix %q must end in '/' so it cannot match a sibling", e.Prefix)
		}
	case "memory":
	case "":
		return errors.New("state.backend is required (etcd or memory)")
	default:
		return fmt.Errorf("state.backend %q: want etcd or memory", c.State.Backend)
	}
	switch c.Secrets.Backend {
	case "overlay":
		o := c.Secrets.Overlay
		if o == nil || o.MasterKey == "" {
			return errors.New("secrets.overlay.master_key is required (a Custodia-format key file; set autogen: true to create it)")
		}
		if o.Enctype != "A256CBC-HS512" {
			return fmt.Errorf("secrets.overlay.enctype %q: only A256CBC-HS512 is supported", o.Enctype)
		}
		switch o.Protection {
		case "pinning", "migrate", "encrypt":
		default:
			return fmt.Errorf("secrets.overlay.protection %q: want pinning, migrate or encrypt", o.Protection)
		}
		switch o.Store {
		case "etcd":
			if c.State.Backend != "etcd" {
				return errors.New("secrets.overlay.store etcd uses the state etcd: set state.backend to etcd")
			}
			if !strings.HasSuffix(o.Prefix, "/") {
				return fmt.Errorf("secrets.overlay.prefix %q must end in '/'", o.Prefix)
			}
			// Disjoint namespaces are what keeps secrets out of the state backend.
			if sp := c.State.Etcd.Prefix; strings.HasPrefix(o.Prefix, sp) || strings.HasPrefix(sp, o.Prefix) {
				return fmt.Errorf("secrets.overlay.prefix %q and state.etcd.prefix %q overlap; they must be disjoint", o.Prefix, sp)
			}
		case "memory":
		default:
			return fmt.Errorf("secrets.overlay.store %q: want etcd or memory", o.Store)
		}
	case "vault":
		if c.Secrets.Vault == nil {
			return errors.New("secrets.vault: section required for backend vault")
		}
	case "":
		return errors.New("secrets.backend is required (overlay or vault)")
	default:
		return fmt.Errorf("secrets.backend %q: want overlay or vault", c.Secrets.Backend)
	}
	return nil
}
