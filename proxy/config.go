package proxy

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/net/http/httpguts"

	yaml "go.yaml.in/yaml/v3"

	"github.com/sealrun/sealrun/internal/configfile"
	"github.com/sealrun/sealrun/internal/credpath"
	"github.com/sealrun/sealrun/proxy/audit"
	storageconfig "github.com/sealrun/sealrun/storage/config"
)

// Config is the secrets proxy's configuration file. Unknown fields are
// errors. The storage section is the storage package's own format (secrets
// and state backends), decoded by it with its own strict rules.
type Config struct {
	Listen    Listen    `yaml:"listen"`
	OpsListen string    `yaml:"ops_listen"` // host:port for /healthz, /readyz, /metrics; empty: off
	Auth      Auth      `yaml:"auth"`
	Limits    Limits    `yaml:"limits"`
	AuditLog  string    `yaml:"audit_log"`
	Audit     Audit     `yaml:"audit"`
	Cache     *Cache    `yaml:"cache"` // optional; absent means the defaults
	Storage   yaml.Node `yaml:"storage"`

	storage *storageconfig.Config
}

// Listen says where the API is served.
type Listen struct {
	Socket      string `yaml:"socket"`       // default /run/sealrun/secrets.sock
	SocketMode  string `yaml:"socket_mode"`  // octal, "0600" (default) or "0660"
	SocketGroup string `yaml:"socket_group"` // group owning the socket, with 0660
	TCP         *TCP   `yaml:"tcp"`
}

// TCP serves the API over TLS 1.3 with client certificates (for sidecar-less
// deployments); the API key is still required.
type TCP struct {
	Address      string `yaml:"address"`
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// Auth configures authentication.
type Auth struct {
	IDHeader    string `yaml:"id_header"`    // default CUSTODIA_AUTH_ID
	KeyHeader   string `yaml:"key_header"`   // default CUSTODIA_AUTH_KEY
	AllowedUIDs []int  `yaml:"allowed_uids"` // unix peers must also run as one of these
}

// Limits bound what one client can cost.
type Limits struct {
	MaxBody int64   `yaml:"max_body"` // bytes, default 1 MiB
	Rate    float64 `yaml:"rate"`     // requests/s per credential, default DefaultRate
	Burst   int     `yaml:"burst"`    // default DefaultBurst
	// WatchStreams bounds the watch streams one credential holds open;
	// default 64.
	WatchStreams int `yaml:"watch_streams"`
}

// Audit configures how far each audit line gets before the answer.
type Audit struct {
	// Sync is "fsync" (the default: each line fsync'd before the answer,
	// group commit; survives a power loss) or "write" (each line written to
	// the file before the answer, not fsync'd: survives a proxy crash, not
	// a power loss — the guarantee of Vault's file audit device). Both fail
	// closed: a line that cannot be written fails its request.
	Sync audit.Sync `yaml:"sync"`
}

// Cache configures the proxy's cache of decrypted values, which serves GETs
// without a backend read or decrypt and is kept correct by watching the
// backend (see valueCache).
type Cache struct {
	// Values is "auto" (the default), "on" or "off". Auto turns the cache
	// on for the overlay, whose etcd watch reports every change, in order,
	// as it is committed, and off for Vault: Vault's watch polls
	// (poll_interval), so a value changed in Vault directly would be served
	// stale for up to a poll interval, and a delete and re-create that
	// lands on the same version between two polls is never seen (stale
	// until evicted or restarted). "on" with Vault accepts that.
	Values string `yaml:"values"`
	// Entries bounds how many values the cache holds; default 10000.
	Entries int `yaml:"entries"`
	// Bytes bounds the memory those values take (value and name bytes);
	// default 64 MiB. A value larger than an eighth of it is not cached.
	Bytes int64 `yaml:"bytes"`
}

// DefaultRate and DefaultBurst are limits.rate and limits.burst when unset:
// a bound on a runaway or leaked credential, not a quota. An honest client
// (a runner or worker: a few requests per job, keys cached) makes tens of
// requests a second; 200/s turned a 16-connection load on one credential
// into 93% 429s. 10000/s is about the whole proxy's uncached GET rate on 2
// cores, so no single honest client reaches it.
const (
	DefaultRate  = 10000
	DefaultBurst = 20000
)

// DefaultCacheEntries and DefaultCacheBytes are cache.entries and
// cache.bytes when unset.
const (
	DefaultCacheEntries       = 10000
	DefaultCacheBytes   int64 = 64 << 20
)

// LoadConfig reads and validates a proxy configuration file.
func LoadConfig(path string) (*Config, error) {
	return configfile.Load(path, "proxy", DecodeConfig)
}

// DecodeConfig strictly decodes one YAML document, applies defaults and
// validates.
func DecodeConfig(r io.Reader) (*Config, error) {
	var c Config
	if err := configfile.DecodeStrict(r, &c); err != nil {
		return nil, err
	}
	if c.Storage.Kind == 0 {
		return nil, errors.New("storage: required (the secrets and state backends the proxy fronts)")
	}
	var err error
	if c.storage, err = storageconfig.DecodeSection(&c.Storage); err != nil {
		return nil, err
	}
	if c.Listen.Socket == "" {
		c.Listen.Socket = "/run/sealrun/secrets.sock"
	}
	if c.Listen.SocketMode == "" {
		c.Listen.SocketMode = "0600"
	}
	if c.AuditLog == "" {
		c.AuditLog = "/var/lib/sealrun/audit.log"
	}
	if c.Audit.Sync, err = audit.ParseSync(string(c.Audit.Sync)); err != nil {
		return nil, err
	}
	if _, err := c.SocketMode(); err != nil {
		return nil, err
	}
	if t := c.Listen.TCP; t != nil && (t.Address == "" || t.CertFile == "" || t.KeyFile == "" || t.ClientCAFile == "") {
		return nil, errors.New("listen.tcp: address, cert_file, key_file and client_ca_file are all required (TLS 1.3 with client certificates)")
	}
	if t := c.Listen.TCP; t != nil {
		// The TLS key may come from systemd's LoadCredential= (package credpath).
		if err := credpath.ExpandFields(credpath.Field{Name: "listen.tcp.cert_file", Path: &t.CertFile},
			credpath.Field{Name: "listen.tcp.key_file", Path: &t.KeyFile},
			credpath.Field{Name: "listen.tcp.client_ca_file", Path: &t.ClientCAFile}); err != nil {
			return nil, err
		}
	}
	for name, h := range map[string]string{"auth.id_header": c.Auth.IDHeader, "auth.key_header": c.Auth.KeyHeader} {
		if h != "" && !httpguts.ValidHeaderFieldName(h) {
			return nil, fmt.Errorf("%s %q is not a valid HTTP header name", name, h)
		}
	}
	if c.Cache == nil {
		c.Cache = &Cache{}
	}
	switch c.Cache.Values {
	case "":
		c.Cache.Values = "auto"
	case "auto", "on", "off":
	default:
		return nil, fmt.Errorf("cache.values %q: want auto, on or off", c.Cache.Values)
	}
	if c.Cache.Entries < 0 || c.Cache.Bytes < 0 {
		return nil, errors.New("cache.entries and cache.bytes must not be negative")
	}
	if c.Cache.Entries == 0 {
		c.Cache.Entries = DefaultCacheEntries
	}
	if c.Cache.Bytes == 0 {
		c.Cache.Bytes = DefaultCacheBytes
	}
	if c.Limits.MaxBody < 0 || c.Limits.Rate < 0 || c.Limits.Burst < 0 || c.Limits.WatchStreams < 0 {
		return nil, errors.New("limits: values must not be negative")
	}
	return &c, nil
}

// StorageConfig is the decoded storage section.
func (c *Config) StorageConfig() *storageconfig.Config { return c.storage }

// SocketMode parses listen.socket_mode.
func (c *Config) SocketMode() (os.FileMode, error) {
	m, err := strconv.ParseUint(c.Listen.SocketMode, 8, 32)
	if err != nil || (m != 0o600 && m != 0o660) {
		return 0, fmt.Errorf("listen.socket_mode %q: want \"0600\" or \"0660\"", c.Listen.SocketMode)
	}
	if m == 0o660 && c.Listen.SocketGroup == "" {
		return 0, errors.New("listen.socket_mode 0660 needs listen.socket_group")
	}
	return os.FileMode(m), nil
}

// Options turns the config into server options (Store, Credentials and
// Audit still to be filled in).
func (c *Config) Options() Options {
	return Options{IDHeader: c.Auth.IDHeader, KeyHeader: c.Auth.KeyHeader, AllowedUIDs: c.Auth.AllowedUIDs,
		MaxBody: c.Limits.MaxBody, Rate: c.Limits.Rate, Burst: c.Limits.Burst, ValueCache: c.valueCache(), ValueCacheBytes: c.Cache.Bytes, MaxWatchStreams: c.Limits.WatchStreams}
}

// valueCache is Options.ValueCache: the entry bound, or 0 for off.
func (c *Config) valueCache() int {
	on := c.Cache.Values == "on"
	if c.Cache.Values == "auto" {
		on = c.storage != nil && c.storage.Secrets.Backend == "overlay"
	}
	if !on {
		return 0
	}
	return c.Cache.Entries
}
