package migrate

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(crashChild()) // a crash test's child process (crash_test.go)
	}
	testenv.Main(m)
}

// keyset is one StudioML deployment's key material.
type keyset struct {
	privPEM, pass []byte
	signing       map[string]string // prefix -> ssh-ed25519 line
	response      map[string][]byte // prefix -> RSA PUBLIC KEY PEM
}

var (
	keysOnce sync.Once
	keys     keyset
)

// studioKeys makes (once per package: RSA generation is slow under -race)
// an encrypted message key, its passphrase (written with the common trailing
// newline), two signing keys and a response key.
func studioKeys(t testing.TB) keyset {
	t.Helper()
	keysOnce.Do(func() {
		mk, err := envelope.GenerateMessageKey(2048)
		if err != nil {
			panic(err)
		}
		pw := make([]byte, 12)
		rand.Read(pw)
		pass := []byte("pw-" + hexs(pw))
		pem, err := mk.MarshalEncryptedPEM(pass)
		if err != nil {
			panic(err)
		}
		keys = keyset{privPEM: pem, pass: append(pass, '\n'), signing: map[string]string{}, response: map[string][]byte{}}
		for _, p := range []string{"rmq_cpu_andrei_", "rmq_gpu_"} {
			sk, err := envelope.GenerateSigningKey()
			if err != nil {
				panic(err)
			}
			keys.signing[p] = sk.Public().AuthorizedKey()
		}
		keys.response["rmq_cpu_andrei_"] = mk.Public().MarshalPKCS1PEM()
	})
	return keys
}

func hexs(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// secretsOf lists strings that must never appear in output: the passphrase
// and the body lines of the private key PEM.
func (k keyset) secretsOf() []string {
	out := []string{strings.TrimSpace(string(k.pass))}
	for _, line := range strings.Split(string(k.privPEM), "\n") {
		if len(line) > 40 && !strings.HasPrefix(line, "-----") {
			out = append(out, line)
		}
	}
	return out
}

func assertNoSecrets(t testing.TB, what string, data []byte, k keyset) {
	t.Helper()
	for _, s := range k.secretsOf() {
		if bytes.Contains(data, []byte(s)) {
			t.Fatalf("%s contains secret material", what)
		}
	}
}

// writeMount writes the StudioML layout the way a Kubernetes secret volume
// looks: files are symlinks into ..data, which links to a timestamped dir,
// plus a dummy "info" item.
func writeMount(t testing.TB, root, sub string, files map[string][]byte) {
	t.Helper()
	dir := filepath.Join(root, filepath.FromSlash(sub))
	stamp := filepath.Join(dir, "..2026_11_23_19_00_00.000000001")
	if err := os.MkdirAll(stamp, 0o755); err != nil {
		t.Fatal(err)
	}
	files["info"] = []byte("dummy")
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(stamp, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Base(stamp), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	for name := range files {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func studioDir(t testing.TB, k keyset) string {
	root := t.TempDir()
	writeMount(t, root, "message/encryption", map[string][]byte{
		"ssh-privatekey": k.privPEM, "ssh-publickey": k.response["rmq_cpu_andrei_"]})
	writeMount(t, root, "message/passphrase", map[string][]byte{"ssh-passphrase": k.pass})
	sig := map[string][]byte{}
	for p, l := range k.signing {
		sig[p] = []byte(l + "\n")
	}
	writeMount(t, root, "queues/signing", sig)
	writeMount(t, root, "queues/response-encrypt", map[string][]byte{"rmq_cpu_andrei_": k.response["rmq_cpu_andrei_"]})
	return root
}

// dest is the production destination: the overlay on real embedded etcd.
type dest struct {
	*storage.Service
	cli  *clientv3.Client
	ring *overlay.KeyRing
}

func registry() *secrets.Registry {
	r := secrets.Default()
	Register(r)
	return r
}

func newKeyT(t testing.TB, id string) overlay.Key {
	t.Helper()
	raw := make([]byte, overlay.KeySize)
	rand.Read(raw)
	k, err := overlay.NewKey(id, raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newDest(t testing.TB) *dest {
	t.Helper()
	cli := testenv.Etcd(t)
	return destOn(t, cli, "/sealrun/secrets/", "/sealrun/state/", newKeyT(t, "k1"))
}

func destOn(t testing.TB, cli *clientv3.Client, secretPrefix, statePrefix string, keys ...overlay.Key) *dest {
	t.Helper()
	ring, err := overlay.NewKeyRing(keys[0], keys[1:]...)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := storage.New(overlay.New(etcddrv.New(cli, secretPrefix), ring, overlay.Pinning),
		etcddrv.New(cli, statePrefix), storage.Options{Registry: registry(), Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return &dest{Service: svc, cli: cli, ring: ring}
}

func opts(from string) Options {
	return Options{From: from, To: "test", Verify: true, Checkpoint: true, OnConflict: OnConflictFail}
}

func mustRun(t testing.TB, src Source, dst Store, o Options) *Report {
	t.Helper()
	rep, err := Run(context.Background(), src, dst, o)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return rep
}

func reportJSON(t testing.TB, r *Report) []byte {
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func resultOf(r *Report, kind, key string) ItemResult {
	for _, it := range r.Items {
		if it.Kind == kind && it.Key == key {
			return it
		}
	}
	return ItemResult{Result: "absent"}
}

// readConcurrently runs workers goroutines reading records 0..n-1 (each
// from its own start, stepping by step) with read until the returned stop
// is called; stop waits for them and says how many reads ran and failed.
// Errors after stop are not failures.
func readConcurrently(ctx context.Context, workers, n, step int, read func(ctx context.Context, i int) error) (stop func() (reads, failures int64)) {
	rctx, cancel := context.WithCancel(ctx)
	var reads, failures atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w * (n / workers); rctx.Err() == nil; i = (i + step) % n {
				err := read(rctx, i)
				if rctx.Err() != nil {
					return
				}
				if err != nil {
					failures.Add(1)
				}
				reads.Add(1)
			}
		}()
	}
	var once sync.Once
	return func() (int64, int64) {
		once.Do(func() { cancel(); wg.Wait() })
		return reads.Load(), failures.Load()
	}
}
