package custodia_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage/custodia"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

// custodiaDo sends one request to the real Custodia and returns status and body.
func custodiaDo(t *testing.T, s *testenv.CustodiaServer, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, "http://custodia"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	s.Auth(req)
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

func simple(v string) map[string]string { return map[string]string{"type": "simple", "value": v} }

// namespace is sealrun's Custodia namespace on real etcd, in CPD-101's
// EtcdStore namespace, with the master key file Custodia generated.
func namespace(t *testing.T, s *testenv.CustodiaServer) (*custodia.Namespace, driver.Driver) {
	t.Helper()
	key, err := overlay.LoadKeyFile(s.MasterKey, false)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := overlay.NewKeyRing(key)
	if err != nil {
		t.Fatal(err)
	}
	under := etcd.New(testenv.Etcd(t), custodia.Prefix("/custodia_commissaire_data"))
	return custodia.New(under, ring, overlay.Pinning), under
}

type jwcryptoResult struct {
	OK    bool   `json:"ok"`
	Value string `json:"value"`
	Error string `json:"error"`
}

// jwcryptoOpen opens records with Custodia's own EncryptedOverlay (jwcrypto).
func jwcryptoOpen(t *testing.T, masterKey string, records map[string]string) map[string]jwcryptoResult {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	script := filepath.Join(filepath.Dir(file), "..", "..", "test", "interop", "custodia_overlay.py")
	type rec struct {
		Key   string `json:"key"`
		Value string `json:"value"`
	}
	var in []rec
	for k, v := range records {
		in = append(in, rec{k, v})
	}
	b, _ := json.Marshal(in)
	cmd := exec.CommandContext(t.Context(), testenv.DebianPython, script, masterKey)
	cmd.Stdin = bytes.NewReader(b)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("custodia_overlay.py: %v\n%s", err, stderr.String())
	}
	var res []struct {
		Key   string `json:"key"`
		OK    bool   `json:"ok"`
		Value string `json:"value"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("custodia_overlay.py output: %v", err)
	}
	m := map[string]jwcryptoResult{}
	for _, r := range res {
		m[r.Key] = jwcryptoResult{r.OK, r.Value, r.Error}
	}
	return m
}

// Values real Custodia wrote (read from its sqlite store) open through
// sealrun's namespace with Custodia's own key file, pins enforced; its
// containers are containers.
func TestCustodiaWroteSealrunReads(t *testing.T) {
	s := testenv.Custodia(t)
	for _, c := range []string{"/secrets/app/", "/secrets/app/sub/"} {
		if code, _ := custodiaDo(t, s, "POST", c, nil); code != http.StatusCreated {
			t.Fatalf("POST %s: %d", c, code)
		}
	}
	want := map[string]string{"app/db": "s3cret value ✓", "app/sub/n": `{"json":"as sent"}`}
	for name, v := range want {
		if code, body := custodiaDo(t, s, "PUT", "/secrets/"+name, simple(v)); code != http.StatusCreated {
			t.Fatalf("PUT %s: %d %s", name, code, body)
		}
	}
	ns, under := namespace(t, s)
	ctx := t.Context()
	// Copy Custodia's records, as they are, to the same names in etcd.
	for _, key := range []string{"keys/app", "keys/app/sub", "keys/app/db", "keys/app/sub/n"} {
		rec, ok, err := s.Record(key)
		if err != nil || !ok {
			t.Fatalf("custodia record %s: %v %v", key, ok, err)
		}
		if _, err := under.Put(ctx, strings.TrimPrefix(key, "keys/"), []byte(rec), driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for name, v := range want {
		e, err := ns.GetValue(ctx, name)
		if err != nil {
			t.Fatalf("open Custodia's %s: %v", name, err)
		}
		if string(e.Value) != v {
			t.Fatalf("%s: got %d bytes, not the value Custodia was given", name, len(e.Value))
		}
	}
	for _, c := range []string{"app", "app/sub"} {
		if _, err := ns.GetContainer(ctx, c); err != nil {
			t.Fatalf("container %s: %v", c, err)
		}
	}
	values, containers, err := ns.List(ctx, "app")
	if err != nil || strings.Join(values, ",") != "app/db,app/sub/n" || strings.Join(containers, ",") != "app/sub" {
		t.Fatalf("list app: values %v containers %v err %v", values, containers, err)
	}
	// A ciphertext Custodia wrote, copied to another name, does not open.
	rec, _, _ := s.Record("keys/app/db")
	if _, err := under.Put(ctx, "app/copied", []byte(rec), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = ns.GetValue(ctx, "app/copied")
	if ns.ErrorCode(err) != driver.Integrity || !strings.Contains(err.Error(), "pinned to another name") {
		t.Fatalf("copied ciphertext: %v", err)
	}
}

// Values sealrun wrote open with jwcrypto (Custodia's reader) at Custodia's
// names and are served by real Custodia from its store; copied to another
// name they fail in both.
func TestSealrunWroteCustodiaReads(t *testing.T) {
	s := testenv.Custodia(t)
	ns, under := namespace(t, s)
	ctx := t.Context()
	want := map[string]string{"app/db": "s3cret value ✓", "app/sub/n": "nested", "app/empty": ""}
	for _, c := range []string{"app", "app/sub"} {
		if _, err := ns.Span(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	for name, v := range want {
		if _, err := ns.PutValue(ctx, name, []byte(v), driver.PutOptions{IfAbsent: true}); err != nil {
			t.Fatal(err)
		}
	}
	records := map[string]string{}
	keys, err := under.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		e, err := under.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		records["keys/"+k] = string(e.Value)
	}
	if records["keys/app"] != "" || records["keys/app/sub"] != "" || len(records) != 5 {
		t.Fatalf("records: %d (want containers as empty records, as Custodia spans them)", len(records))
	}
	// jwcrypto through Custodia's EncryptedOverlay, with pinning.
	open := map[string]string{}
	for name := range want {
		open["keys/"+name] = records["keys/"+name]
	}
	open["keys/app/swapped"] = records["keys/app/db"]
	res := jwcryptoOpen(t, s.MasterKey, open)
	for name, v := range want {
		r := res["keys/"+name]
		if v == "" {
			continue // jwcrypto cannot decrypt an empty payload, Custodia's own included
		}
		if !r.OK || r.Value != v {
			t.Fatalf("jwcrypto %s: ok=%v err=%s (value matches: %v)", name, r.OK, r.Error, r.Value == v)
		}
	}
	if r := res["keys/app/swapped"]; r.OK || !strings.Contains(r.Error, "Pinning check failed") {
		t.Fatalf("jwcrypto opened a swapped ciphertext: %+v", r.Error)
	}
	// Real Custodia serves sealrun's records placed in its store.
	for key, rec := range records {
		if err := s.PutRecord(key, rec); err != nil {
			t.Fatal(err)
		}
	}
	for name, v := range want {
		if v == "" {
			continue // Custodia cannot read back an empty value (it answers 500)
		}
		code, body := custodiaDo(t, s, "GET", "/secrets/"+name, nil)
		var got struct{ Type, Value string }
		if code != http.StatusOK || json.Unmarshal(body, &got) != nil || got.Value != v {
			t.Fatalf("Custodia GET %s: %d", name, code)
		}
	}
	code, body := custodiaDo(t, s, "GET", "/secrets/app/", nil)
	if code != http.StatusOK || string(body) != `["db","empty","sub/","sub/n"]` {
		t.Fatalf("Custodia list of sealrun's records: %d %s", code, body)
	}
	if err := s.PutRecord("keys/app/swapped", records["keys/app/db"]); err != nil {
		t.Fatal(err)
	}
	if code, _ := custodiaDo(t, s, "GET", "/secrets/app/swapped", nil); code != http.StatusInternalServerError {
		t.Fatalf("Custodia served a swapped ciphertext: %d", code)
	}
}

// A container and a value never share a name, and neither reads as the other.
func TestContainerValueDistinct(t *testing.T) {
	s := testenv.Custodia(t)
	ns, _ := namespace(t, s)
	ctx := t.Context()
	if _, err := ns.Span(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.PutValue(ctx, "c", []byte("v"), driver.PutOptions{IfAbsent: true}); ns.ErrorCode(err) != driver.Conflict {
		t.Fatalf("value over a container: %v", err)
	}
	if _, err := ns.GetValue(ctx, "c"); ns.ErrorCode(err) != driver.NotFound {
		t.Fatalf("container read as a value: %v", err)
	}
	if err := ns.DeleteValue(ctx, "c", driver.DeleteOptions{}); ns.ErrorCode(err) != driver.NotFound {
		t.Fatalf("container deleted as a value: %v", err)
	}
	if _, err := ns.PutValue(ctx, "c/v", []byte("v"), driver.PutOptions{IfAbsent: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := ns.GetContainer(ctx, "c/v"); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("value read as a container: %v", err)
	}
	if err := ns.Cut(ctx, "c/v", driver.DeleteOptions{}); ns.ErrorCode(err) != driver.NotFound {
		t.Fatalf("value cut as a container: %v", err)
	}
}
