package config_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/config"
	"github.com/sealrun/sealrun/storage/driver"
)

const overlayYAML = `
secrets:
  backend: overlay
  overlay: {store: etcd, master_key: KEY, autogen: true, enctype: A256CBC-HS512, protection: pinning}
state:
  backend: etcd
  etcd: {data_dir: DIR, prefix: /sealrun/state/}
`

func TestDecodeErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"secrets: {backend: overlay, overlay: {master_key: k, store: memory, master_kye: x}}\nstate: {backend: memory}", "master_kye"},
		{"state: {backend: memory, etcdd: {}}\nsecrets: {backend: vault, vault: {}}", "etcdd"},
		{"state: {backend: memory}\nsecrets: {backend: overlay, overlay: {store: etcd, master_key: k}}", "set state.backend to etcd"},
		{"state: {backend: etcd, etcd: {data_dir: d}}\nsecrets: {backend: overlay, overlay: {store: etcd, master_key: k, prefix: /sealrun/state/x/}}", "overlap"},
		{"state: {backend: memory}\nsecrets: {backend: overlay, overlay: {store: memory, master_key: k, enctype: A128CBC-HS256}}", "A256CBC-HS512"},
		{"state: {backend: memory}\nsecrets: {backend: overlay, overlay: {store: memory, master_key: k, protection: off}}", "protection"},
		{"state: {backend: etcd}\nsecrets: {backend: vault, vault: {}}", "data_dir"},
		{"state: {backend: memory}\nsecrets: {backend: s3}", "s3"},
		{"", "empty config"},
	} {
		_, err := config.Decode(strings.NewReader(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Decode(%q) = %v, want an error mentioning %q", tc.yaml, err, tc.want)
		} else {
			t.Logf("user sees: %v", err)
		}
	}
}

func TestExampleConfigs(t *testing.T) {
	for _, f := range []string{"sealrun.yaml", "vault.yaml"} {
		if _, err := config.Load(filepath.Join("..", "..", "configs", f)); err != nil {
			t.Errorf("configs/%s: %v", f, err)
		}
	}
}

// TestOpenEmbedded opens overlay-on-embedded-etcd from YAML and round-trips
// a secret and a plain model.
func TestOpenEmbedded(t *testing.T) {
	dir := t.TempDir()
	y := strings.NewReplacer("KEY", filepath.Join(dir, "master.key"), "DIR", filepath.Join(dir, "etcd")).Replace(overlayYAML)
	c, err := config.Decode(strings.NewReader(y))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := config.Open(t.Context(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if _, err := svc.Put(t.Context(), &secrets.Raw{Name: "a/b", Value: secrets.Secret("v")}, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	got := &secrets.Raw{Name: "a/b"}
	if _, err := svc.Get(t.Context(), got); err != nil || string(got.Value.Reveal()) != "v" {
		t.Fatalf("Get: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(overlayYAML)
	f.Add("secrets: {backend: vault, vault: {address: http://127.0.0.1:8200, mount: secret, prefix: p, token_file: t, poll_interval: 2s}}\nstate: {backend: memory}")
	f.Add("state: {backend: etcd, etcd: {endpoints: [a], tls: {ca_file: x}, dial_timeout: 1s}}\nsecrets: {backend: overlay, overlay: {store: memory, master_key: k}}")
	f.Add("state: [1, 2]")
	f.Add("secrets: &a {backend: *a}")
	f.Add("{")
	f.Fuzz(func(t *testing.T, y string) {
		c, err := config.Decode(strings.NewReader(y))
		if err == nil && c.Validate() != nil {
			t.Fatal("Decode accepted a config that does not validate")
		}
	})
}
