// Package config reads sealrun's storage configuration (YAML, strictly
// decoded) and opens a storage.Service from it, starting an embedded etcd
// when no endpoints are configured.
package config

import (
	"errors"
	"fmt"
	"github.com/sealrun/sealrun/storage/custodia"
	"io"
	"strings"
	"time"

	"github.com/sealrun/sealrun/internal/configfile"
	"github.com/sealrun/sealrun/internal/credpath"
)

// Config is the storage part of sealrun's configuration.
type Config struct {
	Secrets Secrets `yaml:"secrets"`
	State   State   `yaml:"state"`
}

// Secrets selects the backend for secret models.
type Secrets struct {
	// Backend is "overlay", "vault" or "none". With "none" the process
	// holds no secret backend and no key: secret models are refused. It is
	// for components that only keep state (the runner next to a secrets
	// proxy), so they never need the master key or a Vault token.
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
	// CustodiaNamespace is the namespace of Custodia's EtcdStore under which
	// values and containers of the Custodia API are recorded exactly as
	// Custodia records them, at <namespace>/keys/<container>/<name>
	// (default "/custodia"; CPD-101 uses "/custodia_commissaire_data").
	// Typed models stay under Prefix.
	CustodiaNamespace string `yaml:"custodia_namespace"`
	// MasterKey is the path of a Custodia-format JWK key file.
	MasterKey string `yaml:"master_key"`
	// OldKeys are earlier master key files. They still open values sealed
	// with them, so a key rotation (sealrun rotate master-key) never makes a
	// value unreadable; nothing new is sealed with them.
	OldKeys []string `yaml:"old_keys"`
	// Autogen creates MasterKey (mode 0600) when absent.
	Autogen bool `yaml:"autogen"`
	// Enctype must be "A256CBC-HS512" (the default), Custodia's default.
	Enctype string `yaml:"enctype"`
	// Protection is "pinning" (default), "migrate" or "encrypt".
	Protection string `yaml:"protection"`
	// Transit, if set, seals values with data keys wrapped by a Vault
	// Transit key (see transit.go); MasterKey and OldKeys then become
	// optional and, if given, only open values sealed before the switch
	// (e.g. Custodia's, without a kid): new values always use a DEK.
	Transit *Transit `yaml:"transit"`
}

// Vault is a Vault KV v2 backend.
type Vault struct {
	// Address defaults to $VAULT_ADDR.
	Address string `yaml:"address"`
	// Mount is the KV v2 mount (default "secret").
	Mount string `yaml:"mount"`
	// Prefix is the path under the mount (default "sealrun").
	Prefix string `yaml:"prefix"`
	// TokenFile holds the token; empty means $VAULT_TOKEN. Only for auth
	// method token: a static token is the credential to avoid.
	TokenFile string `yaml:"token_file"`
	// Auth logs in with a Vault auth method instead of a static token.
	Auth *VaultAuth `yaml:"auth"`
	// PollInterval is how often watches poll (default 1s).
	PollInterval time.Duration `yaml:"poll_interval"`
}

// VaultAuth logs in to Vault and keeps the resulting token alive: it is
// renewed while Vault allows, then sealrun logs in again, re-reading the
// credential file (Kubernetes rotates projected service-account tokens).
type VaultAuth struct {
	// Method is "token" (default: token_file or $VAULT_TOKEN), "kubernetes"
	// or "approle".
	Method string `yaml:"method"`
	// Mount is the auth method's mount path (default: the method's name).
	Mount string `yaml:"mount"`
	// Role is the Vault role to log in as (kubernetes).
	Role string `yaml:"role"`
	// JWTFile is the service-account token presented to Vault (kubernetes;
	// default the pod's token). Prefer a projected token with a "vault"
	// audience, so the token is useless against the Kubernetes API.
	JWTFile string `yaml:"jwt_file"`
	// RoleID is the AppRole role id (approle). It identifies, it does not
	// authenticate: the secret id does.
	RoleID string `yaml:"role_id"`
	// SecretIDFile holds the AppRole secret id (approle), e.g.
	// ${CREDENTIALS_DIRECTORY}/vault-secret-id under systemd.
	SecretIDFile string `yaml:"secret_id_file"`
	// SecretIDWrapped says SecretIDFile holds a response-wrapping token
	// for the secret id (approle); see vaultauth.AppRole.
	SecretIDWrapped bool `yaml:"secret_id_wrapped"`
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
func Load(path string) (*Config, error) { return configfile.Load(path, "storage", Decode) }

// Decode strictly decodes one YAML document (an unknown field is an error
// naming it), applies defaults and the etcdctl environment where the file
// leaves the cluster open (see etcdenv.go), and validates.
func Decode(r io.Reader) (*Config, error) {
	var c Config
	if err := configfile.DecodeStrict(r, &c); err != nil {
		return nil, err
	}
	c.setDefaults()
	if err := c.applyEtcdEnv(lookupEnv); err != nil {
		return nil, err
	}
	if err := c.expandCredentials(); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// expandCredentials resolves ${CREDENTIALS_DIRECTORY} in every path that may
// name a secret file (see package credpath).
func (c *Config) expandCredentials() error {
	var fs []credpath.Field
	if o := c.Secrets.Overlay; o != nil {
		fs = append(fs, credpath.Field{Name: "secrets.overlay.master_key", Path: &o.MasterKey})
		for i := range o.OldKeys {
			fs = append(fs, credpath.Field{Name: fmt.Sprintf("secrets.overlay.old_keys[%d]", i), Path: &o.OldKeys[i]})
		}
	}
	if v := c.Secrets.Vault; v != nil {
		fs = append(fs, credpath.Field{Name: "secrets.vault.token_file", Path: &v.TokenFile})
		if a := v.Auth; a != nil {
			fs = append(fs, credpath.Field{Name: "secrets.vault.auth.jwt_file", Path: &a.JWTFile},
				credpath.Field{Name: "secrets.vault.auth.secret_id_file", Path: &a.SecretIDFile})
		}
	}
	if e := c.State.Etcd; e != nil {
		fs = append(fs, credpath.Field{Name: "state.etcd.password_file", Path: &e.PasswordFile})
		if t := e.TLS; t != nil {
			fs = append(fs, credpath.Field{Name: "state.etcd.tls.ca_file", Path: &t.CAFile},
				credpath.Field{Name: "state.etcd.tls.cert_file", Path: &t.CertFile},
				credpath.Field{Name: "state.etcd.tls.key_file", Path: &t.KeyFile})
		}
	}
	return credpath.ExpandFields(fs...)
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
		o.CustodiaNamespace = orDefault(o.CustodiaNamespace, custodia.DefaultNamespace)
		o.Enctype = orDefault(o.Enctype, "A256CBC-HS512")
		o.Protection = orDefault(o.Protection, "pinning")
	}
	if v := c.Secrets.Vault; v != nil {
		v.Mount = orDefault(v.Mount, "secret")
		v.Prefix = orDefault(v.Prefix, "sealrun")
		if a := v.Auth; a != nil {
			a.Method = orDefault(a.Method, "token")
			a.Mount = orDefault(a.Mount, a.Method)
			if a.Method == "kubernetes" {
				a.JWTFile = orDefault(a.JWTFile, "/var/run/secrets/kubernetes.io/serviceaccount/token")
			}
		}
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
			return errNoEtcd
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
		if o == nil || (o.MasterKey == "" && o.Transit == nil) {
			return errors.New("secrets.overlay.master_key is required (a Custodia-format key file; set autogen: true to create it), unless secrets.overlay.transit wraps the data keys")
		}
		if o.Enctype != "A256CBC-HS512" {
			return fmt.Errorf("secrets.overlay.enctype %q: only A256CBC-HS512 is supported", o.Enctype)
		}
		switch o.Protection {
		case "pinning", "migrate", "encrypt":
		default:
			return fmt.Errorf("secrets.overlay.protection %q: want pinning, migrate or encrypt", o.Protection)
		}
		if err := c.validateTransit(); err != nil {
			return err
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
			cp := custodia.Prefix(o.CustodiaNamespace)
			if !strings.HasPrefix(o.CustodiaNamespace, "/") || strings.Contains(o.CustodiaNamespace, "//") {
				return fmt.Errorf("secrets.overlay.custodia_namespace %q: want an absolute etcd path such as /custodia_commissaire_data", o.CustodiaNamespace)
			}
			for what, p := range map[string]string{"secrets.overlay.prefix": o.Prefix, "state.etcd.prefix": c.State.Etcd.Prefix} {
				if strings.HasPrefix(cp, p) || strings.HasPrefix(p, cp) {
					return fmt.Errorf("secrets.overlay.custodia_namespace %q and %s %q overlap; they must be disjoint", o.CustodiaNamespace, what, p)
				}
			}
		case "memory":
		default:
			return fmt.Errorf("secrets.overlay.store %q: want etcd or memory", o.Store)
		}
	case "vault":
		if c.Secrets.Vault == nil {
			return errors.New("secrets.vault: section required for backend vault")
		}
		if err := c.Secrets.Vault.validateAuth(); err != nil {
			return err
		}
	case "none":
		if c.Secrets.Overlay != nil || c.Secrets.Vault != nil {
			return errors.New("secrets.backend none takes no overlay or vault section")
		}
	case "":
		return errors.New("secrets.backend is required (overlay, vault or none)")
	default:
		return fmt.Errorf("secrets.backend %q: want overlay, vault or none", c.Secrets.Backend)
	}
	return nil
}

func (v *Vault) validateAuth() error {
	a := v.Auth
	if a == nil {
		return nil
	}
	if a.Method != "token" && v.TokenFile != "" {
		return fmt.Errorf("secrets.vault: token_file and auth.method %s exclude each other", a.Method)
	}
	if strings.Contains(a.Mount, "..") || strings.HasPrefix(a.Mount, "/") {
		return fmt.Errorf("secrets.vault.auth.mount %q: want a mount path such as %q", a.Mount, a.Method)
	}
	switch a.Method {
	case "token":
		if a.Role != "" || a.RoleID != "" || a.SecretIDFile != "" || a.JWTFile != "" {
			return errors.New("secrets.vault.auth: method token takes no role, role_id, secret_id_file or jwt_file")
		}
	case "kubernetes":
		if a.Role == "" {
			return errors.New("secrets.vault.auth.role is required for method kubernetes")
		}
		if a.RoleID != "" || a.SecretIDFile != "" {
			return errors.New("secrets.vault.auth: role_id and secret_id_file are for method approle")
		}
	case "approle":
		if a.RoleID == "" || a.SecretIDFile == "" {
			return errors.New("secrets.vault.auth: method approle needs role_id and secret_id_file")
		}
		if a.Role != "" || a.JWTFile != "" {
			return errors.New("secrets.vault.auth: role and jwt_file are for method kubernetes")
		}
	default:
		return fmt.Errorf("secrets.vault.auth.method %q: want token, kubernetes or approle", a.Method)
	}
	return nil
}
