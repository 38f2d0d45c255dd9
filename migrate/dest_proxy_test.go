package migrate

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sealrun/sealrun/internal/proxytest"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy"
	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

func TestProxyDestination(t *testing.T) {
	k := studioKeys(t)
	cli := testenv.Etcd(t)
	ring := mustRing(t, newKeyT(t, "p"))
	pstore, err := storage.New(overlay.New(etcddrv.New(cli, "/sealrun/secrets/"), ring, overlay.Pinning),
		etcddrv.New(cli, "/sealrun/state/"), storage.Options{Registry: proxy.Registry()})
	if err != nil {
		t.Fatal(err)
	}
	defer pstore.Close()
	sock, id, key := startProxy(t, pstore)
	c, err := client.New(client.Config{Socket: sock, ID: id, Key: client.APIKey(key)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst := &ProxyStore{Client: c, Reg: secrets.Default()}
	src := &DirSource{Path: studioDir(t, k)}
	o := opts("dir:x")
	o.Checkpoint = false
	rep := mustRun(t, src, dst, o)
	if rep.Counts[ResultCreated] != 5 || rep.Failed != 0 {
		t.Fatalf("proxy: %s %+v", rep.Summary(), rep.Failures())
	}
	// The proxy stored the typed models in its own store.
	checkStudioModels(t, &dest{Service: pstore, cli: cli}, k)
	if rep := mustRun(t, src, dst, o); rep.Counts[ResultUnchanged] != 5 {
		t.Fatalf("second run: %s %+v", rep.Summary(), rep.Items)
	}
	// A different value cannot be replaced through the create-only API:
	// the item fails with a reason, the destination keeps its value.
	other := &secrets.SigningKey{QueuePrefix: "rmq_gpu_", PublicKey: k.signing["rmq_cpu_andrei_"]}
	if err := pstore.Delete(context.Background(), other.Kind(), other.Key(), driver.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pstore.Put(context.Background(), other, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	rep = mustRun(t, src, dst, o)
	r := resultOf(rep, other.Kind(), other.Key())
	if r.Planned != Update || r.Result != ResultFailed || !strings.Contains(r.Reason, "Custodia API cannot replace") {
		t.Fatalf("update through proxy: %+v", r)
	}
}

// unconfirmed is a proxy backend whose next signing-key write reports a
// timeout, as etcd can, after committing what commit says (nil: nothing;
// the model written; or another value of its key): the proxy answers 503
// "may or may not have been made".
type unconfirmed struct {
	proxy.Store
	fail   atomic.Bool
	commit func(m secrets.Model) secrets.Model
}

func (s *unconfirmed) Put(ctx context.Context, m secrets.Model, o driver.PutOptions) (int64, error) {
	if m.Kind() != secrets.KindSigningKey || !s.fail.CompareAndSwap(true, false) {
		return s.Store.Put(ctx, m, o)
	}
	if w := s.commit(m); w != nil {
		if _, err := s.Store.Put(ctx, w, o); err != nil {
			return 0, err
		}
	}
	return 0, &storage.Error{Op: "put", Kind: m.Kind(), Key: m.Key(), Code: driver.Unavailable, Err: context.DeadlineExceeded}
}

// A migration write through the proxy whose success was not confirmed is
// read back: if the value is there the item is created (and verified);
// if it is not, or another value is, the item fails and says so.
func TestProxyDestinationUnconfirmedWrite(t *testing.T) {
	k := studioKeys(t)
	for _, c := range []struct {
		name    string
		commit  func(m secrets.Model) secrets.Model
		created int
		failed  int
	}{
		{"committed", func(m secrets.Model) secrets.Model { return m }, 5, 0},
		{"lost", func(secrets.Model) secrets.Model { return nil }, 4, 1},
		{"another value", func(m secrets.Model) secrets.Model {
			other := *m.(*secrets.SigningKey)
			other.PublicKey = "ssh-ed25519 AAAAsomeone-else"
			return &other
		}, 4, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			cli := testenv.Etcd(t)
			pstore, err := storage.New(overlay.New(etcddrv.New(cli, "/sealrun/secrets/"), mustRing(t, newKeyT(t, "p")), overlay.Pinning),
				etcddrv.New(cli, "/sealrun/state/"), storage.Options{Registry: proxy.Registry()})
			if err != nil {
				t.Fatal(err)
			}
			defer pstore.Close()
			store := &unconfirmed{Store: pstore, commit: c.commit}
			srv := proxytest.Start(t, store, "admin", proxy.Grant{Paths: []string{"/secrets"}, Verbs: []string{"*"}})
			cl, err := client.New(client.Config{Socket: srv.Socket, ID: srv.ID, Key: client.APIKey(srv.Key)})
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			store.fail.Store(true)
			o := opts("dir:x")
			o.Checkpoint, o.Verify = false, false
			rep := mustRun(t, &DirSource{Path: studioDir(t, k)}, &ProxyStore{Client: cl, Reg: secrets.Default()}, o)
			if store.fail.Load() {
				t.Fatal("the backend's failure was not exercised")
			}
			if rep.Counts[ResultCreated] != c.created || rep.Failed != c.failed {
				t.Fatalf("%s %+v, want %d created, %d failed", rep.Summary(), rep.Failures(), c.created, c.failed)
			}
			for _, r := range rep.Failures() {
				if !strings.Contains(r.Reason, "may or may not have been made") {
					t.Errorf("failed item %s/%s says %q, want that the change may have been made", r.Kind, r.Key, r.Reason)
				}
			}
		})
	}
}
