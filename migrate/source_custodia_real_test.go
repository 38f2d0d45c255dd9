package migrate

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/custodia"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

// realCustodia starts a real Custodia 0.6 holding nested containers, two of
// them empty, and returns it with the values it holds.
func realCustodia(t *testing.T) (*testenv.CustodiaServer, map[string]string, []string) {
	t.Helper()
	s := testenv.Custodia(t)
	containers := []string{"app", "app/sub", "app/sub/deep", "b", "b/c", "b/c/empty2", "empty"}
	values := map[string]string{"app/db": "dbpw-" + randHex(), "app/sub/n": `{"as":"sent"}`,
		"app/sub/deep/x": "deep-" + randHex(), "b/c/v": "v-" + randHex(), "b/top": "top-" + randHex()}
	do := func(method, p string, body any) {
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequestWithContext(t.Context(), method, "http://custodia/secrets/"+p, rd)
		req.Header.Set("Content-Type", "application/json")
		s.Auth(req)
		resp, err := s.HTTPClient().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("Custodia %s %s: %d", method, p, resp.StatusCode)
		}
	}
	for _, c := range containers {
		do("POST", c+"/", nil)
	}
	for n, v := range values {
		do("PUT", n, map[string]string{"type": "simple", "value": v})
	}
	return s, values, containers
}

// custodiaDest is a sealrun store whose Custodia API values and containers
// are in Custodia's own records, as a proxy config with an overlay has them.
func custodiaDest(t *testing.T) *dest {
	t.Helper()
	cli := testenv.Etcd(t)
	ring, _ := overlay.NewKeyRing(newKeyT(t, "k1"))
	ns := custodia.New(etcddrv.New(cli, custodia.Prefix("/custodia_commissaire_data")), ring, overlay.Pinning)
	svc, err := storage.New(overlay.New(etcddrv.New(cli, "/sealrun/secrets/"), ring, overlay.Pinning),
		etcddrv.New(cli, "/sealrun/state/"), storage.Options{Registry: registry(), Timeout: 10 * time.Second, Custodia: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return &dest{Service: svc, cli: cli, ring: ring}
}

// checkImported asserts every value and container of the real Custodia is
// in d, and that a rerun reports everything unchanged.
func checkImported(t *testing.T, rep *Report, d *dest, values map[string]string, containers []string, rerun func() *Report) {
	t.Helper()
	if rep.Counts[ResultCreated] != len(values)+len(containers) || rep.Failed != 0 {
		t.Fatalf("import: %s %+v", rep.Summary(), rep.Failures())
	}
	for n, v := range values {
		raw := &secrets.Raw{Name: n}
		if _, err := d.Get(t.Context(), raw); err != nil || string(raw.Value) != v {
			t.Fatalf("%s not imported as Custodia held it: %v", n, err)
		}
	}
	got, err := d.List(t.Context(), secrets.KindContainer, "")
	if err != nil || !slices.Equal(got, containers) {
		t.Fatalf("containers at the destination: %v %v, want %v", got, err, containers)
	}
	again := rerun()
	if again.Counts[ResultUnchanged] != len(values)+len(containers) || again.Failed != 0 {
		t.Fatalf("rerun: %s", again.Summary())
	}
}

// A real Custodia refuses listing /secrets/: without --containers the
// error names Custodia and says what to do; with them, every value and
// container below them (nested, empty ones too) is imported and verified,
// and a rerun changes nothing.
func TestCustodiaSourceRealCustodia(t *testing.T) {
	ctx := context.Background()
	s, values, containers := realCustodia(t)
	auth := filepath.Join(t.TempDir(), "auth.yaml")
	os.WriteFile(auth, []byte("id: "+s.ID+"\nkey: "+s.Key+"\nid_header: "+s.IDHeader+"\nkey_header: "+s.KeyHeader+"\n"), 0o600)

	all, err := OpenSource(ctx, Spec{Scheme: "custodia", Path: s.Socket}, SourceOptions{AuthFile: auth})
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	_, err = all.Items(ctx)
	if err == nil || !strings.Contains(err.Error(), "Custodia answered 403") || !strings.Contains(err.Error(), "--containers") ||
		strings.Contains(err.Error(), "secrets proxy") {
		t.Fatalf("root listing of a real Custodia: %v", err)
	}

	roots, err := ParseContainers("app,b,/empty/")
	if err != nil {
		t.Fatal(err)
	}
	src, err := OpenSource(ctx, Spec{Scheme: "custodia", Path: s.Socket}, SourceOptions{AuthFile: auth, Containers: roots})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	d := custodiaDest(t)
	rep := mustRun(t, src, d, opts("custodia:"+s.Socket))
	checkImported(t, rep, d, values, containers, func() *Report { return mustRun(t, src, d, opts("custodia:"+s.Socket)) })
	out := reportJSON(t, rep)
	for _, v := range values {
		if bytes.Contains(out, []byte(v)) || bytes.Contains(out, []byte(s.Key)) {
			t.Fatal("report contains a value or the API key")
		}
	}

	missing, _ := OpenSource(ctx, Spec{Scheme: "custodia", Path: s.Socket}, SourceOptions{AuthFile: auth, Containers: []string{"nope"}})
	defer missing.Close()
	if _, err := missing.Items(ctx); err == nil || !strings.Contains(err.Error(), "Custodia answered 404 to list /secrets/nope/") {
		t.Fatalf("a container Custodia does not have: %v", err)
	}
}

// custodia-store: reads Custodia's sqlite store with the master key named
// in its config file, finding everything without listing; a ciphertext
// copied to another name in Custodia's store is reported invalid (its pin),
// not imported.
func TestCustodiaStoreSourceRealCustodia(t *testing.T) {
	ctx := context.Background()
	s, values, containers := realCustodia(t)
	src, err := OpenSource(ctx, Spec{Scheme: "custodia-store", Path: s.Config}, SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	d := custodiaDest(t)
	run := func() *Report { return mustRun(t, src, d, opts("custodia-store:"+s.Config)) }
	checkImported(t, run(), d, values, containers, run)

	rec, _, err := s.Record("keys/app/db")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutRecord("keys/app/copied", rec); err != nil {
		t.Fatal(err)
	}
	rep := run()
	if r := resultOf(rep, secrets.KindRaw, "app/copied"); r.Result != ResultInvalid || !strings.Contains(r.Reason, "pinned to another name") {
		t.Fatalf("copied ciphertext: %+v", r)
	}
	if rep.Counts[ResultUnchanged] != len(values)+len(containers) {
		t.Fatalf("after the copy: %s", rep.Summary())
	}
}

func TestCustodiaStoreSourceBadConfig(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct{ conf, want string }{
		"no secrets": {"[global]\nserver_socket = /x\n", "no [/secrets] section"},
		"etcd":       {"[store:e]\nhandler = EtcdStore\n[/secrets]\nhandler = Secrets\nstore = e\n", "use --from custodia:SOCKET"},
		"no key":     {"[store:p]\nhandler = SqliteStore\ndburi = " + dir + "/db\n[store:e]\nhandler = EncryptedOverlay\nbacking_store = p\nmaster_key = " + dir + "/nokey\n[/secrets]\nhandler = Secrets\nstore = e\n", "master_key"},
		"unresolved": {"[store:p]\nhandler = SqliteStore\ndburi = ${nowhere}/db\n[/secrets]\nhandler = Secrets\nstore = p\n", "cannot resolve ${nowhere}"},
	} {
		f := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".conf")
		os.WriteFile(f, []byte(tc.conf), 0o600)
		_, err := OpenSource(context.Background(), Spec{Scheme: "custodia-store", Path: f}, SourceOptions{})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "custodia-store source") {
			t.Errorf("%s: %v", name, err)
		}
	}
}
