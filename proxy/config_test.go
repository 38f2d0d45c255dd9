package proxy

import (
	"strings"
	"testing"
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
