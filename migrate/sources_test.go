package migrate

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealrun/sealrun/internal/proxytest"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy"
	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

func k8sYAML(k keyset) []byte {
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	var sig strings.Builder
	for p, l := range k.signing {
		fmt.Fprintf(&sig, "    %s: %s\n", p, b64([]byte(l)))
	}
	return []byte(`apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Secret
  metadata: {name: studioml-runner-key-secret, namespace: studioml}
  type: kubernetes.io/ssh-auth
  data:
    ssh-privatekey: ` + b64(k.privPEM) + `
    ssh-publickey: ` + b64(k.response["rmq_cpu_andrei_"]) + `
- apiVersion: v1
  kind: Secret
  metadata: {name: studioml-runner-passphrase-secret, namespace: studioml}
  stringData:
    ssh-passphrase: "` + strings.TrimSpace(string(k.pass)) + `\n"
- apiVersion: v1
  kind: Secret
  metadata: {name: studioml-signing, namespace: studioml}
  data:
    info: ` + b64([]byte("dummy")) + `
` + sig.String() + `
`)
}

func TestK8sSource(t *testing.T) {
	k := studioKeys(t)
	d := newDest(t)
	dir := t.TempDir()
	yml := filepath.Join(dir, "secrets.yaml")
	if err := os.WriteFile(yml, k8sYAML(k), 0o600); err != nil {
		t.Fatal(err)
	}
	// The response key arrives as a single Secret in JSON (kubectl -o json).
	js, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Secret",
		"metadata": map[string]any{"name": "studioml-report-keys"},
		"data":     map[string]string{"rmq_cpu_andrei_": base64.StdEncoding.EncodeToString(k.response["rmq_cpu_andrei_"])}})
	jsf := filepath.Join(dir, "report.json")
	if err := os.WriteFile(jsf, js, 0o600); err != nil {
		t.Fatal(err)
	}
	rep := mustRun(t, &K8sSource{Path: yml}, d, opts("k8s:yaml"))
	if rep.Counts[ResultCreated] != 4 || rep.Counts[ResultSkipped] != 1 || rep.Failed != 0 {
		t.Fatalf("yaml: %s %+v", rep.Summary(), rep.Failures())
	}
	rep = mustRun(t, &K8sSource{Path: jsf}, d, opts("k8s:json"))
	if rep.Counts[ResultCreated] != 1 || rep.Failed != 0 {
		t.Fatalf("json: %s %+v", rep.Summary(), rep.Failures())
	}
	checkStudioModels(t, d, k)
	assertNoSecrets(t, "report", reportJSON(t, rep), k)
	if rep := mustRun(t, &K8sSource{Path: yml}, d, opts("k8s:yaml")); rep.Counts[ResultUnchanged] != 4 {
		t.Fatalf("second run: %s", rep.Summary())
	}

	// Bad base64 is reported by Secret and key, without the value.
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("kind: Secret\nmetadata: {name: s}\ndata:\n  rmq_xyz_abc: '!!notbase64 SECRETVALUE'\n"), 0o600)
	rep = mustRun(t, &K8sSource{Path: bad}, d, opts("k8s:bad"))
	r := resultOf(rep, "unknown", "rmq_xyz_abc")
	if r.Result != ResultInvalid || !strings.Contains(r.Reason, "not valid base64") || strings.Contains(string(reportJSON(t, rep)), "SECRETVALUE") {
		t.Fatalf("bad base64: %+v", r)
	}
}

func TestEtcdSourceWithMapping(t *testing.T) {
	k := studioKeys(t)
	cli := testenv.Etcd(t)
	d := destOn(t, cli, "/sealrun/secrets/", "/sealrun/state/", newKeyT(t, "k1"))
	ctx := context.Background()
	put := func(key string, v []byte) {
		if _, err := cli.Put(ctx, "/legacy/"+key, string(v)); err != nil {
			t.Fatal(err)
		}
	}
	b64 := func(b []byte) []byte { return []byte(base64.StdEncoding.EncodeToString(b)) }
	put("message/private", b64(k.privPEM)) // CPD-101: "today we hold keys in base64"
	put("message/passphrase", b64(k.pass))
	for p, l := range k.signing {
		put("signing/"+p, []byte(l)) // auto: raw
	}
	put("response/rmq_cpu_andrei_", b64(k.response["rmq_cpu_andrei_"]))
	put("hosts/worker-1/password", []byte("hunter2-long-enough"))
	put("tmp/ignore-me", []byte("x"))
	mf := filepath.Join(t.TempDir(), "mapping.yaml")
	os.WriteFile(mf, []byte(`rules:
  - {match: '^message/private$', kind: message-private-key, key: message, encoding: base64}
  - {match: '^message/passphrase$', kind: message-passphrase, key: message, encoding: base64}
  - {match: '^signing/(?P<prefix>[^/]+)$', kind: signing-key, key: '${prefix}', encoding: auto}
  - {match: '^response/([^/]+)$', kind: response-key, encoding: auto}
  - {match: '^tmp/', skip: true}
  - {match: '^hosts/.+$', kind: raw}
`), 0o600)
	m, err := LoadMapping(mf)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ParseSpec("etcd:" + strings.Join(cli.Endpoints(), ",") + "/legacy/")
	if err != nil {
		t.Fatal(err)
	}
	src, err := OpenSource(ctx, sp, SourceOptions{Mapping: m})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	o := opts(sp.String())
	o.DeleteSource = true
	rep := mustRun(t, src, d, o)
	if rep.Counts[ResultCreated] != 6 || rep.Counts[ResultSkipped] != 1 || rep.Failed != 0 {
		t.Fatalf("etcd: %s %+v", rep.Summary(), rep.Failures())
	}
	checkStudioModels(t, d, k)
	raw := &secrets.Raw{Name: "hosts/worker-1/password"}
	if _, err := d.Get(ctx, raw); err != nil || string(raw.Value) != "hunter2-long-enough" {
		t.Fatalf("raw: %v", err)
	}
	// Only the skipped key is left in the source.
	resp, _ := cli.Get(ctx, "/legacy/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != "/legacy/tmp/ignore-me" {
		t.Fatalf("source after --delete-source: %d keys", len(resp.Kvs))
	}
	assertNoSecrets(t, "report", reportJSON(t, rep), k)
}

func TestStoreToStore(t *testing.T) {
	k := studioKeys(t)
	cli := testenv.Etcd(t)
	old := destOn(t, cli, "/old/secrets/", "/old/state/", newKeyT(t, "old"))
	if rep := mustRun(t, &DirSource{Path: studioDir(t, k)}, old, opts("dir:x")); rep.Failed != 0 {
		t.Fatal(rep.Summary())
	}
	d := destOn(t, cli, "/sealrun/secrets/", "/sealrun/state/", newKeyT(t, "new"))
	o := opts("overlay:old")
	o.DeleteSource = true
	rep := mustRun(t, &StoreSource{Store: old.Service}, d, o)
	if rep.Counts[ResultCreated] != 5 || rep.Failed != 0 {
		t.Fatalf("store: %s %+v", rep.Summary(), rep.Failures())
	}
	checkStudioModels(t, d, k)
	if n := countKeys(t, cli, "/old/secrets/"); n != 0 {
		t.Fatalf("%d values left in the old store", n)
	}
}

// startProxy runs sealrun's own proxy in-process as the "running Custodia"
// and returns its socket and an admin credential.
func startProxy(t testing.TB, store *storage.Service) (sock, id, key string) {
	s := proxytest.Start(t, store, "admin", proxy.Grant{Paths: []string{"/secrets"}, Verbs: []string{"*"}})
	return s.Socket, s.ID, s.Key
}

// custodiaStore is the store behind the proxy that stands in for Custodia,
// on a new etcd whose client it also returns.
func custodiaStore(t *testing.T) (*clientv3.Client, *storage.Service) {
	cli := testenv.Etcd(t)
	ring, _ := overlay.NewKeyRing(newKeyT(t, "custodia"))
	pstore, err := storage.New(overlay.New(etcddrv.New(cli, "/custodia/secrets/"), ring, overlay.Pinning),
		etcddrv.New(cli, "/custodia/state/"), storage.Options{Registry: proxy.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pstore.Close() })
	return cli, pstore
}

func TestCustodiaSource(t *testing.T) {
	ctx := context.Background()
	cli, pstore := custodiaStore(t)
	sock, id, key := startProxy(t, pstore)
	c, err := client.New(client.Config{Socket: sock, ID: id, Key: client.APIKey(key)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	values := map[string]string{"hosts/h1": "ssh-pass-one-" + randHex(), "hosts/h2": "ssh-pass-two-" + randHex(), "hosts/db": "dbpw-" + randHex()}
	if err := c.CreateContainer(ctx, "hosts"); err != nil {
		t.Fatal(err)
	}
	for n, v := range values {
		if err := c.Put(ctx, n, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	auth := filepath.Join(t.TempDir(), "auth.yaml")
	os.WriteFile(auth, []byte("id: "+id+"\nkey: "+key+"\n"), 0o600)
	src, err := OpenSource(ctx, Spec{Scheme: "custodia", Path: sock}, SourceOptions{AuthFile: auth})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	d := destOn(t, cli, "/sealrun/secrets/", "/sealrun/state/", newKeyT(t, "k1"))
	o := opts("custodia:" + sock)
	o.DeleteSource = true
	rep := mustRun(t, src, d, o)
	// Three values and the container hosts.
	if rep.Counts[ResultCreated] != 4 || rep.Failed != 0 {
		t.Fatalf("custodia: %s %+v", rep.Summary(), rep.Failures())
	}
	out := reportJSON(t, rep)
	for n, v := range values {
		raw := &secrets.Raw{Name: n}
		if _, err := d.Get(ctx, raw); err != nil || string(raw.Value) != v {
			t.Fatalf("%s: %v", n, err)
		}
		if bytes.Contains(out, []byte(v)) || strings.Contains(string(out), key) {
			t.Fatal("report contains a value or the API key")
		}
		if _, err := c.GetFresh(ctx, n); err == nil {
			t.Fatalf("%s not deleted from the source", n)
		}
	}
}

// A Custodia whose auth headers are renamed (CPD-101's key header is
// CUSTODIA_KEY_ID) is read with the names from the auth file; without them
// its 403 (marked a failed authentication) says which headers it wants.
func TestCustodiaSourceHeaderNames(t *testing.T) {
	ctx := context.Background()
	_, pstore := custodiaStore(t)
	srv := proxytest.Start(t, pstore, "admin", proxy.Grant{Paths: []string{"/secrets"}, Verbs: []string{"*"}},
		func(o *proxy.Options) { o.IDHeader, o.KeyHeader = "CUSTODIA_AUTH_ID", "CUSTODIA_KEY_ID" })
	c, err := client.New(client.Config{Socket: srv.Socket, ID: srv.ID, Key: client.APIKey(srv.Key), KeyHeader: "CUSTODIA_KEY_ID"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.CreateContainer(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, "app/db", []byte("dbpw-"+randHex())); err != nil {
		t.Fatal(err)
	}
	auth := func(extra string) string {
		f := filepath.Join(t.TempDir(), "auth.yaml")
		os.WriteFile(f, []byte("id: "+srv.ID+"\nkey: "+srv.Key+"\n"+extra), 0o600)
		return f
	}
	src, err := OpenSource(ctx, Spec{Scheme: "custodia", Path: srv.Socket}, SourceOptions{AuthFile: auth("id_header: CUSTODIA_AUTH_ID\nkey_header: CUSTODIA_KEY_ID\n")})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if items, err := src.Items(ctx); err != nil || len(items) != 2 || items[0].Key+" "+items[1].Key != "app app/db" && items[0].Key+" "+items[1].Key != "app/db app" {
		t.Fatalf("items with the server's header names: %v %v", items, err)
	}
	def, err := OpenSource(ctx, Spec{Scheme: "custodia", Path: srv.Socket}, SourceOptions{AuthFile: auth("")})
	if err != nil {
		t.Fatal(err)
	}
	defer def.Close()
	if _, err := def.Items(ctx); !errors.Is(err, client.ErrUnauthorized) || !strings.Contains(err.Error(), "CUSTODIA_KEY_ID") {
		t.Fatalf("items with the default header names: %v", err)
	}
	if _, err := OpenSource(ctx, Spec{Scheme: "custodia", Path: srv.Socket}, SourceOptions{AuthFile: auth("key_headr: CUSTODIA_KEY_ID\n")}); err == nil {
		t.Fatal("an auth file with a misspelt option was accepted")
	}
}

func randHex() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hexs(b)
}

func TestVaultSource(t *testing.T) {
	ctx := context.Background()
	addr, token := testenv.Vault(t)
	cfg := vaultapi.DefaultConfig()
	cfg.Address = addr
	vc, err := vaultapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	vc.SetToken(token)
	base := "migtest-" + randHex()
	// KV v2 (the dev server's secret/) and a KV v1 mount.
	if err := vc.Sys().MountWithContext(ctx, base+"-v1", &vaultapi.MountInput{Type: "kv", Options: map[string]string{"version": "1"}}); err != nil {
		t.Fatal(err)
	}
	pw := "vault-pw-" + randHex()
	if _, err := vc.Logical().WriteWithContext(ctx, "secret/data/"+base+"/app/db", map[string]any{"data": map[string]any{"value": pw}}); err != nil {
		t.Fatal(err)
	}
	if _, err := vc.Logical().WriteWithContext(ctx, "secret/data/"+base+"/app/api", map[string]any{"data": map[string]any{"user": "u1", "token": pw + "-tok"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := vc.Logical().WriteWithContext(ctx, base+"-v1/legacy/one", map[string]any{"value": pw + "-v1"}); err != nil {
		t.Fatal(err)
	}
	d := newDest(t)
	for _, c := range []struct {
		src  *VaultSource
		want map[string]string
	}{
		{&VaultSource{Client: vc, Mount: "secret", Path: base}, map[string]string{"app/db": pw, "app/api/user": "u1", "app/api/token": pw + "-tok"}},
		{&VaultSource{Client: vc, Mount: base + "-v1", Path: ""}, map[string]string{"legacy/one": pw + "-v1"}},
	} {
		rep := mustRun(t, c.src, d, opts("vault:"+c.src.Mount))
		if rep.Counts[ResultCreated] != len(c.want) || rep.Failed != 0 {
			t.Fatalf("vault %s (v%d): %s %+v", c.src.Mount, c.src.version, rep.Summary(), rep.Failures())
		}
		for n, v := range c.want {
			raw := &secrets.Raw{Name: n}
			if _, err := d.Get(ctx, raw); err != nil || string(raw.Value) != v {
				t.Fatalf("%s: %v", n, err)
			}
		}
		if bytes.Contains(reportJSON(t, rep), []byte(pw)) {
			t.Fatal("report contains a value")
		}
	}
	_ = time.Second
}

// "etcd:/PREFIX/" reads the cluster ETCDCTL_ENDPOINTS names, here a real
// 3-member cluster with its first listed member dead.
func TestEtcdSourceOnClusterFromEnv(t *testing.T) {
	c := testenv.SharedEtcdCluster(t)
	ctx := t.Context()
	if _, err := c.Client(t).Put(ctx, "/legacy-env/hosts/a", "hunter2-long-enough"); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ETCDCTL_ENDPOINTS", strings.Join(c.Endpoints, ","))
	c.Kill(0)
	sp, err := ParseSpec("etcd:/legacy-env/")
	if err != nil {
		t.Fatal(err)
	}
	src, err := OpenSource(ctx, sp, SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	d := destOn(t, testenv.Etcd(t), "/sealrun/secrets/", "/sealrun/state/", newKeyT(t, "new"))
	if rep := mustRun(t, src, d, opts(sp.String())); rep.Counts[ResultCreated] != 1 || rep.Failed != 0 {
		t.Fatalf("etcd from env: %s %+v", rep.Summary(), rep.Failures())
	}
	raw := &secrets.Raw{Name: "hosts/a"}
	if _, err := d.Get(ctx, raw); err != nil || string(raw.Value) != "hunter2-long-enough" {
		t.Fatalf("raw: %v", err)
	}
}

// "etcd:/PREFIX/" without ETCDCTL_ENDPOINTS says how to name the cluster.
func TestEtcdSourceNoEndpoints(t *testing.T) {
	t.Setenv("ETCDCTL_ENDPOINTS", "")
	sp, err := ParseSpec("etcd:/legacy/")
	if err != nil {
		t.Fatal(err)
	}
	_, err = OpenSource(t.Context(), sp, SourceOptions{})
	if err == nil || !strings.Contains(err.Error(), "ETCDCTL_ENDPOINTS is unset") {
		t.Fatalf("got %v", err)
	}
	t.Logf("user sees: %v", err)
}
