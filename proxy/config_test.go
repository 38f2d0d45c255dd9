package proxy

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/proxy/audit"
)

// TestConfigCredentialsDirectory: the TLS files and the storage section's
// key paths may name systemd credentials.
func TestConfigCredentialsDirectory(t *testing.T) {
	const y = `
listen:
  tcp: {address: "127.0.0.1:0", cert_file: /etc/sealrun/proxy.pem, key_file: "${CREDENTIALS_DIRECTORY}/proxy-key.pem", client_ca_file: /etc/sealrun/ca.pem}
storage:
  state: {backend: memory}
  secrets: {backend: overlay, overlay: {store: memory, master_key: "${CREDENTIALS_DIRECTORY}/master.key"}}
`
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/sealrun-secrets.service")
	c, err := DecodeConfig(strings.NewReader(y))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Listen.TCP.KeyFile; got != "/run/credentials/sealrun-secrets.service/proxy-key.pem" {
		t.Errorf("listen.tcp.key_file = %q", got)
	}
	if got := c.Listen.TCP.CertFile; got != "/etc/sealrun/proxy.pem" {
		t.Errorf("listen.tcp.cert_file = %q (plain paths stay as written)", got)
	}
	if got := c.StorageConfig().Secrets.Overlay.MasterKey; got != "/run/credentials/sealrun-secrets.service/master.key" {
		t.Errorf("storage master_key = %q", got)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "")
	if _, err := DecodeConfig(strings.NewReader(y)); err == nil || !strings.Contains(err.Error(), "CREDENTIALS_DIRECTORY is not set") {
		t.Errorf("unset: %v", err)
	}
}

// TestConfigCache: the value cache defaults to on for the overlay and off
// for Vault (whose polling watch can miss changes); "on"/"off" override;
// the shipped examples load and say the same.
func TestConfigCache(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/sealrun-secrets.service")
	const overlayStorage = `
storage:
  state: {backend: memory}
  secrets: {backend: overlay, overlay: {store: memory, master_key: /etc/sealrun/master.key}}
`
	const vaultStorage = `
storage:
  state: {backend: memory}
  secrets: {backend: vault, vault: {address: "https://vault.example:8200", token_file: /etc/sealrun/vault-token}}
`
	for _, c := range []struct {
		name, yaml string
		want       int
		err        string
	}{
		{"overlay default", overlayStorage, DefaultCacheEntries, ""},
		{"vault default", vaultStorage, 0, ""},
		{"overlay off", "cache: {values: \"off\", entries: 5}\n" + overlayStorage, 0, ""},
		{"vault on", "cache: {values: \"on\", entries: 5}\n" + vaultStorage, 5, ""},
		{"overlay sized", "cache: {values: auto, entries: 7}\n" + overlayStorage, 7, ""},
		{"bad mode", "cache: {values: maybe, entries: 5}\n" + overlayStorage, 0, "cache.values"},
		{"negative", "cache: {values: auto, entries: -1}\n" + overlayStorage, 0, "cache.entries"},
		{"negative bytes", "cache: {values: auto, bytes: -1}\n" + overlayStorage, 0, "cache.bytes"},
		{"bad header name", "auth: {key_header: \"X Key\"}\n" + overlayStorage, 0, "auth.key_header"},
		{"unknown field", "cache: {values: auto, entries: 5, ttl: 3s}\n" + overlayStorage, 0, "ttl"},
	} {
		cfg, err := DecodeConfig(strings.NewReader(c.yaml))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: err %v, want one naming %s", c.name, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got := cfg.Options().ValueCache; got != c.want {
			t.Errorf("%s: ValueCache %d, want %d", c.name, got, c.want)
		}
	}
	cfg, err := DecodeConfig(strings.NewReader("cache: {bytes: 1048576}\n" + overlayStorage))
	if err != nil || cfg.Options().ValueCacheBytes != 1<<20 {
		t.Errorf("cache.bytes 1048576: %v, ValueCacheBytes %d", err, cfg.Options().ValueCacheBytes)
	}
	if cfg, err := DecodeConfig(strings.NewReader(overlayStorage)); err != nil || cfg.Options().ValueCacheBytes != DefaultCacheBytes {
		t.Errorf("cache.bytes default: %v", err)
	}
	for file, want := range map[string]int{"proxy.yaml": DefaultCacheEntries, "proxy-etcd-tls.yaml": DefaultCacheEntries, "proxy-vault.yaml": 0} {
		cfg, err := LoadConfig(filepath.Join("..", "configs", file))
		if err != nil {
			t.Errorf("configs/%s: %v", file, err)
			continue
		}
		if got := cfg.Options().ValueCache; got != want {
			t.Errorf("configs/%s: ValueCache %d, want %d", file, got, want)
		}
	}
}

// TestConfigAuditSync: audit.sync is fsync by default, write on request,
// and anything else is refused naming the field; the limits default to
// DefaultRate/DefaultBurst, which the shipped examples write out.
func TestConfigAuditSync(t *testing.T) {
	const storage = `
storage:
  state: {backend: memory}
  secrets: {backend: overlay, overlay: {store: memory, master_key: /etc/sealrun/master.key}}
`
	for _, c := range []struct {
		yaml string
		want audit.Sync
		err  string
	}{
		{storage, audit.SyncFsync, ""},
		{"audit: {sync: fsync}\n" + storage, audit.SyncFsync, ""},
		{"audit: {sync: write}\n" + storage, audit.SyncWrite, ""},
		{"audit: {sync: none}\n" + storage, "", `audit.sync "none": want fsync`},
		{"audit: {sync: write, path: /tmp/x}\n" + storage, "", "path"},
	} {
		cfg, err := DecodeConfig(strings.NewReader(c.yaml))
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%q: err %v, want one naming %s", c.yaml, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%q: %v", c.yaml, err)
		}
		if cfg.Audit.Sync != c.want {
			t.Errorf("%q: audit.sync %q, want %q", c.yaml, cfg.Audit.Sync, c.want)
		}
	}
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/sealrun-secrets.service")
	for _, file := range []string{"proxy.yaml", "proxy-etcd-tls.yaml", "proxy-vault.yaml"} {
		cfg, err := LoadConfig(filepath.Join("..", "configs", file))
		if err != nil {
			t.Fatalf("configs/%s: %v", file, err)
		}
		if o := cfg.Options(); o.Rate != DefaultRate || o.Burst != DefaultBurst || cfg.Audit.Sync != audit.SyncFsync {
			t.Errorf("configs/%s: rate %v burst %d sync %q, want the defaults", file, o.Rate, o.Burst, cfg.Audit.Sync)
		}
	}
}
