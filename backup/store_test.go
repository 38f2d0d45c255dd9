package backup

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

var testPrefixes = Prefixes{All: []string{"/sealrun/secrets/", "/sealrun/state/"}, Sealed: []string{"/sealrun/secrets/"}}

// fill writes n sealed secrets (through a real overlay) and n state records.
func fill(t *testing.T, c *clientv3.Client, n int) (overlay.Key, map[string][]byte) {
	t.Helper()
	k, err := overlay.GenerateKeyFile(filepath.Join(t.TempDir(), "m.key"), "m1")
	if err != nil {
		t.Fatal(err)
	}
	ring, err := overlay.NewKeyRing(k)
	if err != nil {
		t.Fatal(err)
	}
	ov := overlay.New(etcd.New(c, "/sealrun/secrets/"), ring, overlay.Pinning)
	state := etcd.New(c, "/sealrun/state/")
	plain := map[string][]byte{}
	for i := range n {
		name := fmt.Sprintf("app/s%04d", i)
		plain[name] = []byte(fmt.Sprintf("PLAINTEXT-CANARY-%04d", i))
		if _, err := ov.Put(t.Context(), name, plain[name], driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := state.Put(t.Context(), fmt.Sprintf("jobs/j%04d", i), []byte(`{"state":"done"}`), driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return k, plain
}

func TestStoreExportLoadRoundTrip(t *testing.T) {
	src := testenv.Etcd(t)
	key, plain := fill(t, src, 1200) // more than two pages
	// A key outside the prefixes is not exported.
	if _, err := src.Put(t.Context(), "/other/x", "y"); err != nil {
		t.Fatal(err)
	}
	var pages int
	b, err := ExportStore(t.Context(), src, testPrefixes, func(int) { pages++ })
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Records) != 2400 || pages < 5 {
		t.Fatalf("exported %d records in %d pages", len(b.Records), pages)
	}
	var file bytes.Buffer
	if err := b.Encode(&file); err != nil {
		t.Fatal(err)
	}
	for name, p := range plain {
		if bytes.Contains(file.Bytes(), p) || bytes.Contains(file.Bytes(), []byte(fmt.Sprintf("%x", p))) {
			t.Fatalf("backup holds the plaintext of %s", name)
		}
	}
	if bytes.Contains(file.Bytes(), []byte("PLAINTEXT-CANARY")) {
		t.Fatal("backup holds a plaintext")
	}
	got, err := DecodeStore(bytes.NewReader(file.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	dst := testenv.Etcd(t)
	n, err := LoadStore(t.Context(), dst, got, LoadOptions{})
	if err != nil || n != 2400 {
		t.Fatalf("load: %d, %v", n, err)
	}
	// The same overlay key opens every value in the new store.
	ring, _ := overlay.NewKeyRing(key)
	restored := overlay.New(etcd.New(dst, "/sealrun/secrets/"), ring, overlay.Pinning)
	for name, p := range plain {
		e, err := restored.Get(t.Context(), name)
		if err != nil || !bytes.Equal(e.Value, p) {
			t.Fatalf("%s after load: %v", name, err)
		}
	}
	// A second load into the now non-empty store is refused, and loses nothing.
	if _, err := LoadStore(t.Context(), dst, got, LoadOptions{}); err == nil || !strings.Contains(err.Error(), "already holds 1200 records under /sealrun/secrets/") {
		t.Fatalf("load into non-empty: %v", err)
	}
	if n, err := LoadStore(t.Context(), dst, got, LoadOptions{Force: true}); err != nil || n != 2400 {
		t.Fatalf("forced load: %d %v", n, err)
	}
}

func TestStoreExportRefusesPlaintextSecrets(t *testing.T) {
	c := testenv.Etcd(t)
	if _, err := c.Put(t.Context(), "/sealrun/secrets/app/leak", "hunter2-canary"); err != nil {
		t.Fatal(err)
	}
	_, err := ExportStore(t.Context(), c, testPrefixes, nil)
	if err == nil || !strings.Contains(err.Error(), `"/sealrun/secrets/app/leak" under the secrets prefix /sealrun/secrets/ is not a sealed value`) || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("export: %v", err)
	}
}

func TestDecodeStoreRefuses(t *testing.T) {
	c := testenv.Etcd(t)
	fill(t, c, 3)
	b, err := ExportStore(context.Background(), c, testPrefixes, nil)
	if err != nil {
		t.Fatal(err)
	}
	var good bytes.Buffer
	_ = b.Encode(&good)
	edit := func(f func(*StoreBackup)) string {
		cp := *b
		cp.Records = append([]Record(nil), b.Records...)
		f(&cp)
		var w bytes.Buffer
		_ = cp.Encode(&w)
		return w.String()
	}
	for _, c := range []struct{ name, in, want string }{
		{"garbage", "{", "not a sealrun store backup"},
		{"unknown field", strings.Replace(good.String(), `"format"`, `"extra": 1, "format"`, 1), "unknown field"},
		{"format", edit(func(b *StoreBackup) { b.Format = "x/2" }), "this sealrun reads sealrun-store-backup/1"},
		{"damaged", edit(func(b *StoreBackup) { b.Records[0].Value = []byte("x") }), "damaged or was edited"},
		{"trailing", good.String() + "{}", "data after"},
		{"plaintext", edit(func(b *StoreBackup) {
			b.Records[0].Value = []byte("plain")
			b.SHA256, _ = b.sum()
		}), "not a sealed value"},
		{"outside", edit(func(b *StoreBackup) {
			b.Records[0].Key = "/etc/passwd"
			b.SHA256, _ = b.sum()
		}), "under none of the prefixes"},
	} {
		_, err := DecodeStore(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
}

func FuzzDecodeStore(f *testing.F) {
	f.Add([]byte(`{"format":"sealrun-store-backup/1","prefixes":["/a/"],"sealed":["/a/"],"records":[],"sha256":""}`))
	f.Add([]byte(`{"format":"sealrun-store-backup/1","prefixes":["/a/","/b/"],"sealed":[],"records":[{"key":"/b/x","value":"eA=="}],"sha256":"x"}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, in []byte) {
		b, err := DecodeStore(bytes.NewReader(in))
		if err != nil {
			return
		}
		if err := b.checkRecords(); err != nil {
			t.Fatalf("accepted a backup that fails its checks: %v", err)
		}
	})
}
