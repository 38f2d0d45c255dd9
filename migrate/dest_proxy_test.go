package migrate

import (
	"context"
	"strings"
	"testing"

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
	c, err := client.New(client.Config{Socket: sock, ID: id, Key: key})
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
