package config_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/config"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/overlay"
)

// TestOldKeysStillOpen: after a rotation the config names the new master key
// and keeps the old one in old_keys; values sealed with either open, and new
// values are sealed with the new key.
func TestOldKeysStillOpen(t *testing.T) {
	dir := t.TempDir()
	oldKey, newKey := filepath.Join(dir, "master.key"), filepath.Join(dir, "master-2.key")
	if _, err := overlay.GenerateKeyFile(newKey, "k2"); err != nil {
		t.Fatal(err)
	}
	yml := func(master string, old ...string) *config.Config {
		y := "state: {backend: etcd, etcd: {data_dir: " + filepath.Join(dir, "etcd") + "}}\n" +
			"secrets: {backend: overlay, overlay: {store: etcd, autogen: true, master_key: " + master +
			", old_keys: [" + strings.Join(old, ", ") + "]}}\n"
		c, err := config.Decode(strings.NewReader(y))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	put := func(c *config.Config, name string) {
		svc, err := config.Open(t.Context(), c, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer svc.Close()
		if _, err := svc.Put(t.Context(), &secrets.Raw{Name: name, Value: secrets.Secret("v-" + name)}, driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	put(yml(oldKey), "before")
	after := yml(newKey, oldKey)
	put(after, "after")

	parts, err := config.OpenOverlayParts(t.Context(), after)
	if err != nil {
		t.Fatal(err)
	}
	if parts.Ring.CurrentID() != "k2" || len(parts.Ring.IDs()) != 2 {
		t.Fatalf("ring: current %s, ids %v", parts.Ring.CurrentID(), parts.Ring.IDs())
	}
	ov := overlay.New(parts.Under, parts.Ring, parts.Protection)
	defer func() { _ = parts.Close() }() // on a failure below
	for name, kid := range map[string]string{"before": parts.Ring.IDs()[0], "after": "k2"} {
		// Custodia API values are in Custodia's own records.
		e, err := parts.Custodia.Get(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := overlay.KeyID(string(e.Value)); got != kid && name == "after" {
			t.Fatalf("%s sealed with %q, want %q", name, got, kid)
		}
		if _, _, err := ov.Open(name, string(e.Value)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// Release the embedded etcd's data dir before opening it again.
	if err := parts.Close(); err != nil {
		t.Fatal(err)
	}
	// A missing old key file is a clear error.
	bad := yml(newKey, filepath.Join(dir, "missing.key"))
	if _, err := config.Open(t.Context(), bad, nil); err == nil || !strings.Contains(err.Error(), "old_keys") {
		t.Fatalf("missing old key: %v", err)
	}
}

// TestAutogenRefusesOverSealedRecords: a lost master key with autogen on must
// not be silently replaced by a new one while records sealed with the old key
// exist; the user is told to restore it, and no key file is created.
func TestAutogenRefusesOverSealedRecords(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "master.key")
	y := "state: {backend: etcd, etcd: {data_dir: " + filepath.Join(dir, "etcd") + "}}\n" +
		"secrets: {backend: overlay, overlay: {store: etcd, autogen: true, master_key: " + key + "}}\n"
	c, err := config.Decode(strings.NewReader(y))
	if err != nil {
		t.Fatal(err)
	}
	// An empty store: autogen creates the key.
	svc, err := config.Open(t.Context(), c, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Put(t.Context(), &secrets.Raw{Name: "a/b", Value: secrets.Secret("v")}, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := svc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(key); err != nil {
		t.Fatal(err)
	}
	for name, open := range map[string]func() error{
		"Open": func() error {
			svc, err := config.Open(t.Context(), c, nil)
			if err == nil {
				_ = svc.Close()
			}
			return err
		},
		"OpenOverlayParts": func() error {
			p, err := config.OpenOverlayParts(t.Context(), c)
			if err == nil {
				_ = p.Close()
			}
			return err
		},
	} {
		err := open()
		if err == nil || !strings.Contains(err.Error(), "holds 1 records") || !strings.Contains(err.Error(), "backup restore") {
			t.Fatalf("%s over sealed records without the key: %v", name, err)
		}
		if _, statErr := os.Stat(key); !errors.Is(statErr, fs.ErrNotExist) {
			t.Fatalf("%s created a new master key over sealed records: %v", name, statErr)
		}
	}
}
