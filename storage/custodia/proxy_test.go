package custodia_test

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/proxytest"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy"
	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

// Both directions end to end through sealrun's proxy, configured like
// CPD-101 (CUSTODIA_AUTH_ID / CUSTODIA_KEY_ID, namespace
// /custodia_commissaire_data) with real Custodia's own master key file: what
// a client PUTs through the proxy is served by real Custodia from its store
// (and opens with jwcrypto); what real Custodia wrote is served by the proxy.
func TestProxyAndRealCustodiaShareRecords(t *testing.T) {
	s := testenv.Custodia(t)
	ns, under := namespace(t, s)
	key, err := overlay.LoadKeyFile(s.MasterKey, false)
	if err != nil {
		t.Fatal(err)
	}
	ring, _ := overlay.NewKeyRing(key)
	cli := testenv.Etcd(t)
	store, err := storage.New(overlay.New(etcd.New(cli, "/sealrun/secrets/"), ring, overlay.Pinning),
		etcd.New(cli, "/sealrun/state/"), storage.Options{Registry: proxy.Registry(), Timeout: 10 * time.Second, Custodia: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	srv := proxytest.Start(t, store, "app", proxy.Grant{Paths: []string{"/secrets"}, Verbs: []string{"*"}},
		func(o *proxy.Options) { o.IDHeader, o.KeyHeader = s.IDHeader, s.KeyHeader })
	c, err := client.New(client.Config{Socket: srv.Socket, ID: srv.ID, Key: client.APIKey(srv.Key), IDHeader: s.IDHeader, KeyHeader: s.KeyHeader})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := t.Context()

	// sealrun -> Custodia: PUT through the proxy, serve with real Custodia.
	if err := c.CreateContainer(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	const v = "written through sealrun ✓"
	if err := c.Put(ctx, "app/db", []byte(v)); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"app", "app/db"} {
		e, err := under.Get(ctx, k)
		if err != nil {
			t.Fatalf("record keys/%s in Custodia's layout: %v", k, err)
		}
		if err := s.PutRecord("keys/"+k, string(e.Value)); err != nil {
			t.Fatal(err)
		}
		if k == "app/db" {
			if r := jwcryptoOpen(t, s.MasterKey, map[string]string{"keys/app/db": string(e.Value)})["keys/app/db"]; !r.OK || r.Value != v {
				t.Fatalf("jwcrypto on the proxy's record: %s", r.Error)
			}
		}
	}
	code, body := custodiaDo(t, s, "GET", "/secrets/app/db", nil)
	var reply struct{ Type, Value string }
	if code != http.StatusOK || json.Unmarshal(body, &reply) != nil || reply.Value != v {
		t.Fatalf("real Custodia serving the proxy's record: %d", code)
	}

	// Custodia -> sealrun: PUT to real Custodia, record into etcd, GET via the proxy.
	if code, _ := custodiaDo(t, s, "PUT", "/secrets/app/fromcustodia", simple("custodia wrote this")); code != http.StatusCreated {
		t.Fatalf("PUT to Custodia: %d", code)
	}
	rec, ok, err := s.Record("keys/app/fromcustodia")
	if err != nil || !ok {
		t.Fatalf("Custodia's record: %v %v", ok, err)
	}
	if _, err := under.Put(ctx, "app/fromcustodia", []byte(rec), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetFresh(ctx, "app/fromcustodia")
	if err != nil || string(got) != "custodia wrote this" {
		t.Fatalf("proxy serving Custodia's record: %v", err)
	}
	// Copied to another name, it fails at the proxy too (pin).
	if _, err := under.Put(ctx, "app/copied", []byte(rec), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetFresh(ctx, "app/copied"); err == nil {
		t.Fatal("the proxy served a ciphertext copied to another name")
	}
}
