package envelope

import (
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
)

func cryptoRandRead(p []byte) (int, error) { return rand.Read(p) }

func TestPrefixLookup(t *testing.T) {
	m, err := NewPrefixMap(map[string]int{"rmq_": 1, "rmq_cpu_": 2, "rmq_cpu_andrei_": 3, "rmq_cpu_andrei_x": 4})
	if err != nil {
		t.Fatal(err)
	}
	for queue, want := range map[string]int{
		"rmq_cpu_andrei_x":   4, // exact
		"rmq_cpu_andrei_xyz": 4,
		"rmq_cpu_andrei_1":   3,
		"rmq_cpu_bob":        2,
		"rmq_gpu":            1,
		"rmq_cpu_andrei_":    3,
	} {
		if _, got, ok := m.Lookup(queue); !ok || got != want {
			t.Errorf("Lookup(%q) = %d, %v; want %d", queue, got, ok, want)
		}
	}
	if _, _, ok := m.Lookup("gpu_1"); ok {
		t.Error("no prefix should match gpu_1")
	}
	if _, err := NewPrefixMap(map[string]int{"rmq": 1}); err == nil {
		t.Error("3-character prefix accepted")
	}
	var nilMap *PrefixMap[int]
	if _, _, ok := nilMap.Lookup("x"); ok || nilMap.Len() != 0 {
		t.Error("nil map")
	}
}

// The Kubernetes secret mount layout: ..data symlinks, a dummy info item.
func TestLoadSigningKeysDirKubernetesLayout(t *testing.T) {
	fixtures(t)
	dir := t.TempDir()
	data := filepath.Join(dir, "..2026_11_23_data")
	os.Mkdir(data, 0o755)
	os.WriteFile(filepath.Join(data, "rmq_cpu_alice_"), []byte(fixSign.Public().AuthorizedKey()+" alice\n"), 0o644)
	os.WriteFile(filepath.Join(data, "rmq_cpu_bob_"), []byte(fixSign2.Public().AuthorizedKey()+"\n"), 0o644)
	os.WriteFile(filepath.Join(data, "info"), []byte("not a key"), 0o644)
	os.Symlink(filepath.Base(data), filepath.Join(dir, "..data"))
	for _, n := range []string{"rmq_cpu_alice_", "rmq_cpu_bob_", "info"} {
		os.Symlink(filepath.Join("..data", n), filepath.Join(dir, n))
	}
	keys, err := LoadSigningKeysDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if keys.Len() != 2 {
		t.Fatalf("loaded %v", keys.Prefixes())
	}
	if _, k, _ := keys.Lookup("rmq_cpu_bob_7"); !k.Equal(fixSign2.Public()) {
		t.Fatal("bob's key not selected")
	}
	// A bad file is an error naming the file, not a silent skip.
	os.WriteFile(filepath.Join(dir, "rmq_bad_"), []byte("ssh-rsa AAAA"), 0o644)
	if _, err := LoadSigningKeysDir(dir); err == nil {
		t.Fatal("bad key file accepted")
	}
}
