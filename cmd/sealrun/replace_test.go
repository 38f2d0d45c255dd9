package main

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/internal/proxytest"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy"
	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/runner"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
)

// TestSecretsPutReplaceIsAtomic: "secrets put" over an existing key through
// the proxy replaces it in one write, so a runner reloading its keys in a
// tight loop meanwhile never finds the key missing, nor falls back to a
// shorter prefix's key.
func TestSecretsPutReplaceIsAtomic(t *testing.T) {
	cli := testenv.Etcd(t)
	store, err := storage.New(etcd.New(cli, "/replace/secrets/"), etcd.New(cli, "/replace/state/"), storage.Options{Registry: proxy.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	srv := proxytest.Start(t, store, "ops", proxy.Grant{Paths: []string{"/secrets"}, Verbs: []string{"*"}},
		func(o *proxy.Options) { o.Rate, o.Burst = 1e6, 1e6 })
	ctx := context.Background()
	hk, _ := envelope.GenerateHPKEKey(envelope.SuiteHPKEX25519)
	hp, _ := hk.MarshalPEM()
	short, _ := envelope.GenerateSigningKey()
	var signers []*envelope.SigningPrivateKey
	for range 2 {
		s, _ := envelope.GenerateSigningKey()
		signers = append(signers, s)
	}
	const long = "rmq_replace_cpu_"
	for _, m := range []secrets.Model{
		&secrets.MessagePrivateKey{KeyID: "hpke-1", PEM: hp},
		&secrets.SigningKey{QueuePrefix: "rmq_", PublicKey: short.Public().AuthorizedKey()},
		&secrets.SigningKey{QueuePrefix: long, PublicKey: signers[0].Public().AuthorizedKey()},
	} {
		if _, err := store.Put(ctx, m, driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	newClient := func() *client.Client {
		c, err := client.New(client.Config{Socket: srv.Socket, ID: srv.ID, Key: client.APIKey(srv.Key), Retries: 1, Timeout: 5 * time.Second, CacheTTL: time.Nanosecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	writer := proxyStore{c: newClient(), reg: proxy.Registry()}
	ks := &runner.ProxyKeySource{Client: newClient()}

	stop := make(chan struct{})
	var loads, bad atomic.Int64
	var firstBad atomic.Value
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			k, err := ks.Load(ctx)
			loads.Add(1)
			if err == nil {
				if prefix, _, ok := k.SigningKeys.Lookup(long + "q1"); ok && prefix == long {
					continue
				}
				err = errors.New("the key for " + long + " was missing (or a shorter prefix's matched)")
			}
			bad.Add(1)
			firstBad.CompareAndSwap(nil, err.Error())
		}
	})
	// At least 60 replaces and 500 reloads overlapping them.
	replaces := 0
	deadline := time.Now().Add(60 * time.Second)
	for ; replaces < 60 || (loads.Load() < 500 && time.Now().Before(deadline)); replaces++ {
		i := replaces
		m := &secrets.SigningKey{QueuePrefix: long, PublicKey: signers[(i+1)%2].Public().AuthorizedKey()}
		if err := writer.Put(ctx, m, false); err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("replace %d: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d replaces, %d reloads, %d saw the key missing", replaces, loads.Load(), bad.Load())
	if bad.Load() != 0 {
		t.Fatalf("%d of %d reloads failed during replaces; first: %v", bad.Load(), loads.Load(), firstBad.Load())
	}
	got := &secrets.SigningKey{QueuePrefix: long}
	if _, err := store.Get(ctx, got); err != nil || got.PublicKey != signers[replaces%2].Public().AuthorizedKey() {
		t.Fatalf("after the replaces the key is not the last one written: %v", err)
	}
	// The replace verb on a missing value is 412 (ErrChanged).
	if err := writer.c.Replace(ctx, "sealrun/signing-key/rmq_absent_", []byte(`{}`)); !errors.Is(err, client.ErrChanged) {
		t.Errorf("replace of a missing value: %v, want ErrChanged (412)", err)
	}
}
