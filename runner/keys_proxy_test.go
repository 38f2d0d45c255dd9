package runner

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/internal/proxytest"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy"
	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

// keyProxy is a real secrets proxy (overlay on embedded etcd) holding the
// fixtures' keys as typed models, and a client with a runner's credential.
type keyProxy struct {
	store  *storage.Service
	sock   string
	client *client.Client
	srv    interface{ Close() error }
	id     string // the runner's credential
	key    string
}

func startKeyProxy(t testing.TB) *keyProxy {
	t.Helper()
	raw := make([]byte, overlay.KeySize)
	rand.Read(raw)
	k, _ := overlay.NewKey("k1", raw)
	ring, _ := overlay.NewKeyRing(k)
	// The overlay's watch is exact, so the proxy caches values as it does
	// by default in production.
	return startKeyProxyOn(t, overlay.New(etcd.New(testenv.Etcd(t), "/sealrun/secrets/"), ring, overlay.Pinning),
		func(o *proxy.Options) { o.ValueCache = 1000 })
}

// startKeyProxyOn is startKeyProxy with the given secret backend (plain
// state stays on the embedded etcd).
func startKeyProxyOn(t testing.TB, secretBackend driver.Driver, opts ...func(*proxy.Options)) *keyProxy {
	t.Helper()
	fixtures(t)
	store, err := storage.New(secretBackend, etcd.New(testenv.Etcd(t), "/sealrun/state/"), storage.Options{Registry: proxy.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	srv := proxytest.Start(t, store, "runner-1", proxy.Grant{Paths: []string{"/secrets/sealrun/"}, Verbs: []string{"get", "list", "watch"}}, opts...)
	p := &keyProxy{store: store, sock: srv.Socket, srv: srv, id: srv.ID, key: srv.Key}
	if p.client, err = client.New(client.Config{Socket: p.sock, ID: srv.ID, Key: client.APIKey(srv.Key), Retries: 2, Timeout: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.client.Close)
	ctx := context.Background()
	pem, _ := fixRSA.MarshalEncryptedPEM(fixPass)
	hp, _ := fixHPKE.MarshalPEM()
	for _, m := range []secrets.Model{
		&secrets.MessagePrivateKey{KeyID: "message", PEM: pem},
		&secrets.MessagePassphrase{KeyID: "message", Passphrase: fixPass},
		&secrets.MessagePrivateKey{KeyID: "hpke-1", PEM: hp},
		&secrets.SigningKey{QueuePrefix: fixPrefix, PublicKey: fixSign.Public().AuthorizedKey()},
		&secrets.ResponseKey{ResponsePrefix: fixPrefix, PublicKeyPEM: string(fixResp.Public().MarshalPKCS1PEM())},
	} {
		if _, err := store.Put(ctx, m, driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func TestProxyKeySource(t *testing.T) {
	p := startKeyProxy(t)
	// Each kind's watch signals with a zero Event once it is established.
	var zero atomic.Int32
	established := make(chan struct{})
	ks := &ProxyKeySource{Client: p.client, observe: func(ev client.Event) {
		if ev == (client.Event{}) && zero.Add(1) == int32(len(proxyKeyKinds)) {
			close(established)
		}
	}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	changes := ks.Changes(ctx)
	keys, err := ks.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys.MessageKeys) != 1 || !keys.MessageKeys[0].Equal(fixRSA) || len(keys.HPKEKeys) != 1 || keys.HPKEKeys[0].KeyID() != fixHPKE.KeyID() {
		t.Fatalf("message keys: %d RSA, %d HPKE", len(keys.MessageKeys), len(keys.HPKEKeys))
	}
	if _, k, ok := keys.SigningKeys.Lookup(fixPrefix + "q1"); !ok || !k.Equal(fixSign.Public()) {
		t.Fatal("signing key not loaded")
	}
	if _, k, ok := keys.ResponseKeys.Lookup(fixPrefix + "q1_response"); !ok || !k.Equal(fixResp.Public()) {
		t.Fatal("response key not loaded")
	}
	// A new signing key reaches the runner through the watch stream.
	drain := func() {
		for {
			select {
			case <-changes:
			default:
				return
			}
		}
	}
	select {
	case <-established:
	case <-time.After(10 * time.Second):
		t.Fatalf("%d of %d key watches established", zero.Load(), len(proxyKeyKinds))
	}
	drain()
	p.store.Put(ctx, &secrets.SigningKey{QueuePrefix: "rmq_new_", PublicKey: fixOther.Public().AuthorizedKey()}, driver.PutOptions{})
	select {
	case <-changes:
	case <-time.After(10 * time.Second):
		t.Fatal("no change signalled for a new signing key")
	}
	eventually(t, 5*time.Second, "new signing key loaded", func() bool {
		k, err := ks.Load(ctx)
		return err == nil && k.SigningKeys.Len() == 2
	})
	// The proxy going away is an error (transient for the runner), never an
	// empty key set.
	p.srv.Close()
	p.client.InvalidateAll()
	if _, err := ks.Load(ctx); err == nil {
		t.Fatal("Load succeeded with the proxy down")
	}
}

// keys.proxy.id_header and key_header reach the runner's client: a proxy
// whose auth headers are renamed (as a Custodia deployment's may be) serves
// the keys with them, and answers 403 (marked a failed authentication) without.
func TestProxyKeysHeaderNames(t *testing.T) {
	p := startKeyProxyOn(t, etcd.New(testenv.Etcd(t), "/sealrun/secrets/"),
		func(o *proxy.Options) { o.IDHeader, o.KeyHeader = "CUSTODIA_AUTH_ID", "CUSTODIA_KEY_ID" })
	keyFile := filepath.Join(t.TempDir(), "api-key")
	if err := os.WriteFile(keyFile, []byte(p.key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	doc := strings.Replace(minimalConfig, "keys: {source: dir, dir: /keys}", fmt.Sprintf(
		"keys: {source: proxy, proxy: {socket: %s, api_id: %s, api_key_file: %s, id_header: CUSTODIA_AUTH_ID, key_header: CUSTODIA_KEY_ID}}",
		p.sock, p.id, keyFile), 1)
	cfg, err := DecodeConfig(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	load := func(pk *ProxyKeys) error {
		c, err := client.New(pk.ClientConfig())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = (&ProxyKeySource{Client: c}).Load(context.Background())
		return err
	}
	if err := load(cfg.Keys.Proxy); err != nil {
		t.Fatalf("load with the proxy's header names: %v", err)
	}
	defaults := *cfg.Keys.Proxy
	defaults.IDHeader, defaults.KeyHeader = "", ""
	if err := load(&defaults); !errors.Is(err, client.ErrUnauthorized) || !strings.Contains(err.Error(), "CUSTODIA_KEY_ID") {
		t.Fatalf("load with the default header names: %v", err)
	}
}

// The runner consumes with keys fetched through the proxy.
func TestRunnerWithProxyKeys(t *testing.T) {
	p := startKeyProxy(t)
	q := fixPrefix + "proxied"
	h := newHarness(t, harnessOpt{queues: []string{q}, responses: true,
		keys: func(KeySource) KeySource { return &ProxyKeySource{Client: p.client} }})
	h.publish(q, sealStudio(t, fixSign), sealHPKE(t, q))
	resps := h.finalReports(envelope.ResponseQueue(q), 2, 30*time.Second)
	if len(resps) != 2 {
		t.Fatalf("got %d responses, want 2", len(resps))
	}
}
