package migrate

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/storage/driver"
)

// FuzzParseK8sSecrets: kubectl output is untrusted input; parsing must not
// panic, and an error must never quote a data value.
func FuzzParseK8sSecrets(f *testing.F) {
	f.Add([]byte("kind: Secret\nmetadata: {name: s}\ndata:\n  ssh-passphrase: cHc=\n"))
	f.Add([]byte(`{"kind":"List","items":[{"kind":"Secret","metadata":{"name":"studioml-signing"},"stringData":{"rmq_x_":"ssh-ed25519 AAAA"}}]}`))
	f.Add([]byte("kind: Secret\ndata: {a: 1}\n---\nkind: ConfigMap\n"))
	f.Add([]byte("kind: List\nitems: [{kind: Pod}]\n"))
	f.Add([]byte("data:\n  k: !!binary SGVsbG8=\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		items, err := ParseK8sSecrets(data, DefaultKeyID)
		if err != nil {
			if strings.Contains(err.Error(), "FUZZSECRET") {
				t.Fatalf("error quotes input: %v", err)
			}
			return
		}
		for _, it := range items {
			if it.Model == nil && it.Err == nil && it.SkipReason == "" {
				t.Fatalf("item %s has no model, error or skip reason", it.ID())
			}
		}
	})
}

// FuzzParseMapping: mapping files are operator input; no panics, and every
// accepted rule maps names without panicking.
func FuzzParseMapping(f *testing.F) {
	f.Add([]byte("rules:\n  - {match: '^signing/(.+)$', kind: signing-key, encoding: auto}\n"), "signing/rmq_x_", []byte("c3No"))
	f.Add([]byte("rules:\n  - {match: '^(?P<k>.*)$', kind: raw, key: '${k}/x', encoding: base64}\n"), "a/b", []byte("!!"))
	f.Add([]byte("rules:\n  - {match: '.', skip: true}\n"), "", []byte(""))
	f.Add([]byte("rules: [{match: '(', kind: raw}]"), "x", []byte("y"))
	f.Fuzz(func(t *testing.T, data []byte, name string, value []byte) {
		m, err := ParseMapping(data)
		if err != nil {
			return
		}
		it := m.item(name, value, "fuzz")
		if it.Err != nil && strings.Contains(it.Err.Error(), string(value)) && len(value) > 8 {
			t.Fatalf("mapping error quotes the value")
		}
	})
}

// FuzzParseSpec: a spec that parses prints back to an equivalent spec.
func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"dir:/etc/studioml", "k8s:secrets.yaml", "etcd:127.0.0.1:2379/custodia/keys/",
		"etcd:https://a:2379,http://b:2379/p/", "custodia:/run/custodia.sock", "vault:secret/studioml",
		"vault:kv", "overlay:old.yaml", "etcd:a", "bogus:x", ":", "etcd:http://x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sp, err := ParseSpec(s)
		if err != nil {
			return
		}
		again, err := ParseSpec(sp.String())
		if err != nil {
			t.Fatalf("%q parsed, but its String %q does not: %v", s, sp.String(), err)
		}
		if !reflect.DeepEqual(sp, again) {
			t.Fatalf("%q: %+v != %+v", s, sp, again)
		}
	})
}

func TestParseSpec(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Spec
	}{
		{"dir:/etc/studioml", Spec{Scheme: "dir", Path: "/etc/studioml"}},
		{"etcd:10.0.0.1:2379,10.0.0.2:2379/custodia/keys/", Spec{Scheme: "etcd", Endpoints: []string{"10.0.0.1:2379", "10.0.0.2:2379"}, Prefix: "/custodia/keys/"}},
		{"etcd:https://h:2379/p", Spec{Scheme: "etcd", Endpoints: []string{"https://h:2379"}, Prefix: "/p"}},
		{"etcd:/custodia/keys/", Spec{Scheme: "etcd", Prefix: "/custodia/keys/"}}, // ETCDCTL_ENDPOINTS
		{"vault:secret/studioml/keys", Spec{Scheme: "vault", Mount: "secret", Path: "studioml/keys"}},
	} {
		got, err := ParseSpec(c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseSpec(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "dir:", "etcd:host:2379", "nfs:/x", "vault:/", "etcd:,/p"} {
		if _, err := ParseSpec(bad); err == nil {
			t.Errorf("ParseSpec(%q) accepted", bad)
		}
	}
}

// FuzzParseContainers: --containers is user input; what it accepts are
// valid storage keys without surrounding slashes, and it round-trips.
func FuzzParseContainers(f *testing.F) {
	for _, s := range []string{"a,b/c", "/app/,x", "secrets/a", ",", "a//b", "a/../b", "a\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if strings.HasPrefix(s, "@") {
			return // a file name
		}
		got, err := ParseContainers(s)
		if err != nil {
			return
		}
		for _, c := range got {
			if err := driver.ValidateKey(c); err != nil || strings.HasPrefix(c, "/") || strings.HasSuffix(c, "/") || strings.Contains(c, ",") {
				t.Fatalf("%q accepted container %q: %v", s, c, err)
			}
		}
		again, err := ParseContainers(strings.Join(got, ","))
		if err != nil || !reflect.DeepEqual(got, again) {
			t.Fatalf("%q: %v does not round-trip: %v %v", s, got, again, err)
		}
	})
}

// FuzzCustodiaStoreConfig: Custodia's config file is read from disk; any
// content gives a source or a clear error naming the file, never a panic.
func FuzzCustodiaStoreConfig(f *testing.F) {
	for _, s := range []string{"[store:p]\nhandler = SqliteStore\ndburi = ${configdir}/db\n[/secrets]\nhandler = Secrets\nstore = p\n",
		"[/secrets]\nhandler = Secrets\nstore = e\n[store:e]\nhandler = EncryptedOverlay\nbacking_store = e\n", "${", "[a]\nx = ${a:x}\n"} {
		f.Add(s)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, s string) {
		p := filepath.Join(dir, "custodia.conf")
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		src, err := OpenCustodiaStoreSource(p)
		if err == nil {
			src.Close()
			return
		}
		if !strings.Contains(err.Error(), "custodia-store source "+p) {
			t.Fatalf("error does not name the config file: %v", err)
		}
	})
}

func TestParseContainers(t *testing.T) {
	file := filepath.Join(t.TempDir(), "containers.txt")
	os.WriteFile(file, []byte("# walked by migrate\napp\n\n /b/c/ \n"), 0o600)
	for in, want := range map[string][]string{"a,b/c": {"a", "b/c"}, " /app/ ,x": {"app", "x"}, "@" + file: {"app", "b/c"}} {
		if got, err := ParseContainers(in); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("ParseContainers(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{",": "no container named", "secrets/a": `relative to /secrets/ (e.g. "a")`,
		"a,@b": "a leading @ names a file", "@" + file + ".missing": "no such file", "a/../b": "--containers"} {
		if _, err := ParseContainers(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseContainers(%q): %v, want an error saying %q", in, err, msg)
		}
	}
}
