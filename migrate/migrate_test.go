package migrate

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

func countKeys(t testing.TB, cli *clientv3.Client, prefix string) int64 {
	t.Helper()
	resp, err := cli.Get(context.Background(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

// checkStudioModels asserts the destination holds exactly the keyset's models.
func checkStudioModels(t *testing.T, d *dest, k keyset) {
	t.Helper()
	ctx := context.Background()
	pk := &secrets.MessagePrivateKey{KeyID: DefaultKeyID}
	if _, err := d.Get(ctx, pk); err != nil || !bytes.Equal(pk.PEM, k.privPEM) {
		t.Fatalf("private key not imported as is (err %v)", err)
	}
	pp := &secrets.MessagePassphrase{KeyID: DefaultKeyID}
	if _, err := d.Get(ctx, pp); err != nil || !bytes.Equal(pp.Passphrase, k.pass) {
		t.Fatalf("passphrase not imported as is (err %v)", err)
	}
	for p, line := range k.signing {
		sk := &secrets.SigningKey{QueuePrefix: p}
		if _, err := d.Get(ctx, sk); err != nil || sk.PublicKey != line {
			t.Fatalf("signing key %s: err %v", p, err)
		}
	}
	for p, pem := range k.response {
		rk := &secrets.ResponseKey{ResponsePrefix: p}
		if _, err := d.Get(ctx, rk); err != nil || rk.PublicKeyPEM != string(pem) {
			t.Fatalf("response key %s: err %v", p, err)
		}
	}
	// Nothing readable in etcd: every secret value is a JWE.
	resp, err := d.cli.Get(ctx, "/sealrun/secrets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		assertNoSecrets(t, "raw etcd value", kv.Value, k)
		if strings.Count(string(kv.Value), ".") != 4 {
			t.Fatalf("etcd value %s is not a compact JWE", kv.Key)
		}
	}
}

func TestDirSource(t *testing.T) {
	k := studioKeys(t)
	d := newDest(t)
	src := &DirSource{Path: studioDir(t, k)}

	// Dry run: a plan, no writes (no checkpoint either).
	o := opts("dir:x")
	o.DryRun = true
	rep := mustRun(t, src, d, o)
	if rep.Counts[ResultWouldCreate] != 5 || rep.Counts[ResultSkipped] != 1 || rep.Failed != 0 {
		t.Fatalf("dry run: %s", rep.Summary())
	}
	if n := countKeys(t, d.cli, "/sealrun/"); n != 0 {
		t.Fatalf("dry run wrote %d keys", n)
	}

	rep = mustRun(t, src, d, opts("dir:x"))
	if rep.Counts[ResultCreated] != 5 || rep.Failed != 0 {
		t.Fatalf("run: %s %+v", rep.Summary(), rep.Failures())
	}
	for _, it := range rep.Items {
		if it.Result == ResultCreated && !it.Verified {
			t.Fatalf("%s/%s not verified", it.Kind, it.Key)
		}
	}
	if got := resultOf(rep, "message-public-key", DefaultKeyID); got.Result != ResultSkipped || got.Reason == "" {
		t.Fatalf("public key: %+v", got)
	}
	checkStudioModels(t, d, k)
	assertNoSecrets(t, "report", reportJSON(t, rep), k)
	if n := countKeys(t, d.cli, "/sealrun/state/"+KindCheckpoint); n != 0 {
		t.Fatalf("checkpoint left after a complete run")
	}

	// Idempotent: the second run changes nothing.
	rep = mustRun(t, src, d, opts("dir:x"))
	if rep.Counts[ResultUnchanged] != 5 || rep.Counts[ResultSkipped] != 1 || len(rep.Counts) != 2 {
		t.Fatalf("second run: %s", rep.Summary())
	}
}

func TestBadKeyFiles(t *testing.T) {
	k := studioKeys(t)
	d := newDest(t)
	root := studioDir(t, k)
	// Wrong passphrase: neither half of the pair may be imported.
	pass := filepath.Join(root, "message/passphrase/..data/ssh-passphrase")
	if err := os.WriteFile(pass, []byte("not-the-passphrase"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A signing key file that is not a key, one with a too-short prefix.
	if err := os.WriteFile(filepath.Join(root, "queues/signing/rmq_bad_"), []byte("ssh-ed25519 garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "queues/signing/rmq"), []byte(k.signing["rmq_gpu_"]), 0o600); err != nil {
		t.Fatal(err)
	}
	rep := mustRun(t, &DirSource{Path: root}, d, opts("dir:bad"))
	for _, c := range []struct{ kind, key, want string }{
		{secrets.KindMessagePrivateKey, DefaultKeyID, "wrong passphrase"},
		{secrets.KindMessagePassphrase, DefaultKeyID, "does not open"},
		{secrets.KindSigningKey, "rmq_bad_", "signing key"},
		{secrets.KindSigningKey, "rmq", "shorter than"},
	} {
		r := resultOf(rep, c.kind, c.key)
		if r.Result != ResultInvalid || !r.Failed || !strings.Contains(r.Reason, c.want) {
			t.Errorf("%s/%s: %+v, want invalid with %q", c.kind, c.key, r, c.want)
		}
		m, _ := registry().New(c.kind, c.key)
		if _, err := d.Get(context.Background(), m); !errors.Is(err, driver.ErrNotFound) {
			t.Errorf("%s/%s was written: %v", c.kind, c.key, err)
		}
	}
	if rep.Counts[ResultCreated] != 3 || rep.Failed != 4 {
		t.Fatalf("bad files: %s", rep.Summary())
	}
	assertNoSecrets(t, "report", reportJSON(t, rep), k)
	if strings.Contains(string(reportJSON(t, rep)), "not-the-passphrase") {
		t.Fatal("report contains the passphrase file's content")
	}
}

func TestConflictBetweenPlanAndWrite(t *testing.T) {
	k := studioKeys(t)
	for _, policy := range []ConflictPolicy{OnConflictFail, OnConflictSkip, OnConflictOverwrite} {
		t.Run(string(policy), func(t *testing.T) {
			ctx := context.Background()
			d := newDest(t)
			src := &DirSource{Path: studioDir(t, k)}
			items, err := src.Items(ctx)
			if err != nil {
				t.Fatal(err)
			}
			plan, err := NewPlan(ctx, items, d, 4)
			if err != nil {
				t.Fatal(err)
			}
			// Someone else writes a signing key after the plan was made.
			theirs := &secrets.SigningKey{QueuePrefix: "rmq_gpu_", PublicKey: k.signing["rmq_cpu_andrei_"]}
			if _, err := d.Put(ctx, theirs, driver.PutOptions{IfAbsent: true}); err != nil {
				t.Fatal(err)
			}
			o := opts("dir:conflict")
			o.OnConflict = policy
			rep, err := Apply(ctx, plan, src, d, o)
			if err != nil {
				t.Fatal(err)
			}
			r := resultOf(rep, secrets.KindSigningKey, "rmq_gpu_")
			got := &secrets.SigningKey{QueuePrefix: "rmq_gpu_"}
			if _, err := d.Get(ctx, got); err != nil {
				t.Fatal(err)
			}
			switch policy {
			case OnConflictFail, OnConflictSkip:
				want := map[ConflictPolicy]string{OnConflictFail: ResultConflict, OnConflictSkip: ResultSkipped}[policy]
				if r.Result != want || r.Failed != (policy == OnConflictFail) {
					t.Fatalf("result %+v", r)
				}
				if got.PublicKey != theirs.PublicKey {
					t.Fatal("the concurrent write was overwritten")
				}
			case OnConflictOverwrite:
				if r.Result != ResultCreated || !r.Verified || got.PublicKey != k.signing["rmq_gpu_"] {
					t.Fatalf("overwrite: %+v", r)
				}
			}
			if rep.Counts[ResultCreated] < 4 {
				t.Fatalf("other items: %s", rep.Summary())
			}
		})
	}
}

// corrupting returns a different value on reads of one kind, as a broken
// backend or a tampering proxy would.
type corrupting struct {
	Store
	kind string
}

func (c corrupting) Get(ctx context.Context, m secrets.Model) (int64, error) {
	rev, err := c.Store.Get(ctx, m)
	if sk, ok := m.(*secrets.SigningKey); ok && err == nil && m.Kind() == c.kind {
		sk.PublicKey += "x"
	}
	return rev, err
}

func TestVerifyCatchesMismatch(t *testing.T) {
	k := studioKeys(t)
	d := newDest(t)
	rep, err := Run(context.Background(), &DirSource{Path: studioDir(t, k)}, corrupting{d, secrets.KindSigningKey}, opts("dir:v"))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Failed != 2 {
		t.Fatalf("want the 2 signing keys failed: %s", rep.Summary())
	}
	for p := range k.signing {
		r := resultOf(rep, secrets.KindSigningKey, p)
		if r.Result != ResultFailed || !strings.Contains(r.Reason, "SHA-256 mismatch") || r.Verified {
			t.Fatalf("%s: %+v", p, r)
		}
	}
}

// interrupting cancels the run after n successful writes, as a crash would
// stop it (the checkpoint flush on cancel is then best-effort extra: resume
// must also work from the last periodic save, tested with every=1).
type interrupting struct {
	Store
	n      int32
	cancel context.CancelFunc
	puts   atomic.Int32
}

func (s *interrupting) Put(ctx context.Context, m secrets.Model, o driver.PutOptions) (int64, error) {
	if m.Kind() == KindCheckpoint {
		return s.Store.Put(ctx, m, o)
	}
	if s.puts.Add(1) > s.n {
		s.cancel()
		return 0, context.Canceled
	}
	return s.Store.Put(ctx, m, o)
}

func TestResumeAfterInterruption(t *testing.T) {
	k := studioKeys(t)
	d := newDest(t)
	src := &DirSource{Path: studioDir(t, k)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	o := opts("dir:resume")
	o.Concurrency, o.CheckpointEvery = 1, 1
	rep, err := Run(ctx, src, &interrupting{Store: d, n: 2, cancel: cancel}, o)
	if !errors.Is(err, ErrIncomplete) {
		t.Fatalf("interrupted run: err %v", err)
	}
	if rep.Counts[ResultCreated] != 2 || rep.Counts[ResultNotRun] == 0 {
		t.Fatalf("interrupted run: %s", rep.Summary())
	}
	if n := countKeys(t, d.cli, "/sealrun/state/"+KindCheckpoint+"/"); n != 1 {
		t.Fatalf("checkpoint keys: %d", n)
	}

	rep = mustRun(t, src, d, o)
	if !rep.Resumed || rep.Failed != 0 || rep.Counts[ResultCreated] != 3 || rep.Counts[ResultUnchanged] != 2 {
		t.Fatalf("resumed run: resumed=%v %s", rep.Resumed, rep.Summary())
	}
	prev := 0
	for _, it := range rep.Items {
		if it.PreviousRun == ResultCreated {
			prev++
		}
	}
	if prev != 2 {
		t.Fatalf("report accounts for %d items of the interrupted run, want 2", prev)
	}
	checkStudioModels(t, d, k)
	if n := countKeys(t, d.cli, "/sealrun/state/"+KindCheckpoint+"/"); n != 0 {
		t.Fatalf("checkpoint left after completion")
	}
}
