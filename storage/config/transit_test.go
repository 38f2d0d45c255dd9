package config_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/storage/config"
)

func TestTransitConfig(t *testing.T) {
	c, err := config.Load(filepath.Join("..", "..", "configs", "overlay-transit.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if tr := c.Secrets.Overlay.Transit; tr.Mount != "transit" || tr.Key != "sealrun-kek" || tr.DEKPrefix != "/sealrun/secrets.deks/" {
		t.Fatalf("transit: %+v", tr)
	}
	d, err := config.Decode(strings.NewReader("state: {backend: etcd, etcd: {data_dir: /x}}\nsecrets: {backend: overlay, overlay: {store: etcd, transit: {}}, vault: {}}"))
	if err != nil {
		t.Fatal(err)
	}
	if tr := d.Secrets.Overlay.Transit; tr.Mount != "transit" || tr.Key != "sealrun-kek" || tr.DEKPrefix != "/sealrun/secrets.deks/" {
		t.Fatalf("defaults: %+v", tr)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"state: {backend: memory}\nsecrets: {backend: overlay, overlay: {store: memory, transit: {}}}", "needs a secrets.vault section"},
		{"state: {backend: memory}\nsecrets: {backend: overlay, overlay: {store: memory, master_key: k}, vault: {}}", "used only with secrets.overlay.transit"},
		{"state: {backend: etcd, etcd: {data_dir: /x}}\nsecrets: {backend: overlay, overlay: {store: etcd, transit: {dek_prefix: /sealrun/secrets/deks/}}, vault: {}}", "overlaps"},
		{"state: {backend: etcd, etcd: {data_dir: /x}}\nsecrets: {backend: overlay, overlay: {store: etcd, transit: {dek_prefix: /d}}, vault: {}}", "must end in '/'"},
		{"state: {backend: memory}\nsecrets: {backend: overlay, overlay: {store: memory, transit: {key: a/b}}, vault: {}}", "plain key name"},
		{"state: {backend: memory}\nsecrets: {backend: overlay, overlay: {store: memory, transit: {kek: x}}, vault: {}}", "field kek not found"},
	} {
		_, err := config.Decode(strings.NewReader(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Decode(%q) = %v, want an error mentioning %q", tc.yaml, err, tc.want)
		}
	}
}
