package kek_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/kek"
	"github.com/sealrun/sealrun/storage/memory"
	"github.com/sealrun/sealrun/storage/overlay"
	"github.com/sealrun/sealrun/vaultauth"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var transitOnce sync.Once

// transitKey returns a root client and a fresh Transit key on the shared
// dev server (Transit mounted at "transit").
func transitKey(t testing.TB, name string) (*api.Client, *kek.Transit) {
	t.Helper()
	addr, token := testenv.Vault(t)
	cfg := api.DefaultConfig()
	cfg.Address = addr
	root, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	root.SetToken(token)
	transitOnce.Do(func() {
		if err := root.Sys().MountWithContext(t.Context(), "transit", &api.MountInput{Type: "transit"}); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := root.Logical().WriteWithContext(t.Context(), "transit/keys/"+name, nil); err != nil {
		t.Fatal(err)
	}
	return root, kek.NewTransit(root, "transit", name, 5*time.Second)
}

func TestWrapUnwrap(t *testing.T) {
	root, tr := transitKey(t, "wrap-test")
	dek := []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
	w, err := tr.Wrap(t.Context(), dek)
	if err != nil {
		t.Fatal(err)
	}
	if kek.Version(w) != 1 || strings.Contains(w, "0123456789") {
		t.Fatalf("wrapped %q: want a vault:v1: ciphertext", w[:8])
	}
	got, err := tr.Unwrap(t.Context(), w)
	if err != nil || string(got) != string(dek) {
		t.Fatalf("unwrap: %v", err)
	}
	if _, err := tr.Unwrap(t.Context(), w[:len(w)-4]+"AAAA"); err == nil {
		t.Fatal("tampered wrap opened")
	}
	if err := tr.Rotate(t.Context()); err != nil {
		t.Fatal(err)
	}
	w2, err := tr.Rewrap(t.Context(), w)
	if err != nil || kek.Version(w2) != 2 {
		t.Fatalf("rewrap: %v version %d", err, kek.Version(w2))
	}
	if got, err := tr.Unwrap(t.Context(), w2); err != nil || string(got) != string(dek) {
		t.Fatalf("unwrap rewrapped: %v", err)
	}
	if _, err := kek.NewTransit(root, "transit", "no-such-key", 0).Info(t.Context()); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing key: %v", err)
	}
}

func TestRingFirstDEKOnce(t *testing.T) {
	root, tr := transitKey(t, "ring-test")
	deks := memory.New()
	// Processes starting together agree on one DEK.
	rings := make([]*overlay.KeyRing, 4)
	var wg sync.WaitGroup
	for i := range rings {
		wg.Go(func() {
			r, err := kek.Ring(t.Context(), deks, tr)
			if err != nil {
				t.Error(err)
			}
			rings[i] = r
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, r := range rings {
		if ids := r.IDs(); len(ids) != 1 || ids[0] != kek.FirstKID {
			t.Fatalf("ring ids %v, want [%s]", ids, kek.FirstKID)
		}
	}
	e, err := deks.Get(t.Context(), "deks/"+kek.FirstKID)
	if err != nil || !strings.Contains(string(e.Value), `"wrapped":"vault:v1:`) {
		t.Fatalf("stored record: %v", err)
	}
	a := overlay.New(memory.New(), rings[0], overlay.Pinning)
	ct, err := a.Seal("k", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(headerOf(t, ct), `"kid":"dek-0001"`) {
		t.Fatalf("value does not name its DEK: %s", headerOf(t, ct))
	}
	// Once loaded, Vault is not needed: a ring from another process opens
	// it with the client's token gone.
	token := root.Token()
	root.SetToken("")
	defer root.SetToken(token)
	if _, _, err := overlay.New(memory.New(), rings[3], overlay.Pinning).Open("k", ct); err != nil {
		t.Fatal(err)
	}
}

func headerOf(t *testing.T, compact string) string {
	t.Helper()
	h, _, _ := strings.Cut(compact, ".")
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRotateWithConcurrentReaders rotates the KEK three times while
// readers read through a running overlay and through overlays built afresh
// from the DEK store (processes starting mid-rotation): no read may fail,
// and no data record may change.
func TestRotateWithConcurrentReaders(t *testing.T) {
	root, tr := transitKey(t, "rotate-test")
	deks, data := memory.New(), memory.New()
	ring, err := kek.Ring(t.Context(), deks, tr)
	if err != nil {
		t.Fatal(err)
	}
	ov := overlay.New(data, ring, overlay.Pinning)
	const n = 50
	revs := map[string]int64{}
	for i := range n {
		k := fmt.Sprintf("hosts/h%d", i)
		rev, err := ov.Put(t.Context(), k, []byte("secret-"+k), driver.PutOptions{})
		if err != nil {
			t.Fatal(err)
		}
		revs[k] = rev
	}
	ctx, stop := context.WithCancel(t.Context())
	var reads, restarts, failed atomic.Int64
	var wg sync.WaitGroup
	check := func(d driver.Driver, i int) {
		k := fmt.Sprintf("hosts/h%d", i%n)
		e, err := d.Get(t.Context(), k)
		reads.Add(1)
		if err != nil || string(e.Value) != "secret-"+k {
			failed.Add(1)
			t.Errorf("read %s: %v", k, err)
		}
	}
	for g := range 3 {
		wg.Go(func() {
			for i := g; ctx.Err() == nil; i++ {
				check(ov, i)
			}
		})
	}
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			r, err := kek.Ring(t.Context(), deks, tr)
			restarts.Add(1)
			if err != nil {
				failed.Add(1)
				t.Errorf("fresh ring: %v", err)
				continue
			}
			check(overlay.New(data, r, overlay.Pinning), i)
		}
	})
	var rep kek.Report
	for range 3 {
		if rep, err = kek.Rotate(t.Context(), deks, tr); err != nil {
			t.Error(err)
		}
		time.Sleep(200 * time.Millisecond) // let fresh rings overlap each phase
	}
	stop()
	wg.Wait()
	t.Logf("%d reads and %d fresh rings during 3 rotations, %d failed; report %+v", reads.Load(), restarts.Load(), failed.Load(), rep)
	if failed.Load() != 0 {
		t.Fatal("reads failed during rotation")
	}
	if !rep.Rotated || rep.Latest != 4 || rep.Rewrapped != 1 || rep.OldestStored != 4 || rep.SafeMinDecryption() != 4 {
		t.Fatalf("report %+v", rep)
	}
	for k, rev := range revs {
		if e, err := data.Get(t.Context(), k); err != nil || e.Revision != rev {
			t.Fatalf("data record %s changed by the rotation (rev %d → %d)", k, rev, e.Revision)
		}
	}
	// What the report says is safe is safe: old KEK versions can go.
	if _, err := root.Logical().WriteWithContext(t.Context(), "transit/keys/rotate-test/config", map[string]any{"min_decryption_version": rep.SafeMinDecryption()}); err != nil {
		t.Fatal(err)
	}
	r, err := kek.Ring(t.Context(), deks, tr)
	if err != nil {
		t.Fatal(err)
	}
	check(overlay.New(data, r, overlay.Pinning), 7)
}

// TestPolicies runs each role with only the policy shipped for it in
// deploy/vault/.
func TestPolicies(t *testing.T) {
	root, _ := transitKey(t, "sealrun-kek")
	token := func(policyFile string) *api.Client {
		hcl, err := os.ReadFile("../../deploy/vault/" + policyFile)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.TrimSuffix(policyFile, ".hcl")
		if err := root.Sys().PutPolicyWithContext(t.Context(), name, string(hcl)); err != nil {
			t.Fatal(err)
		}
		s, err := root.Auth().Token().CreateWithContext(t.Context(), &api.TokenCreateRequest{Policies: []string{name}, TTL: "5m"})
		if err != nil {
			t.Fatal(err)
		}
		c, _ := root.Clone()
		c.SetToken(s.Auth.ClientToken)
		return c
	}
	proxy := kek.NewTransit(token("sealrun-proxy-transit.hcl"), "transit", "sealrun-kek", 0)
	rotator := kek.NewTransit(token("sealrun-kek-rotate.hcl"), "transit", "sealrun-kek", 0)
	deks := memory.New()
	if _, err := kek.Ring(t.Context(), deks, proxy); err != nil {
		t.Fatalf("proxy policy cannot build the ring: %v", err)
	}
	_, err := kek.Rotate(t.Context(), deks, proxy)
	var pe *vaultauth.PermissionError
	if !errors.As(err, &pe) {
		t.Fatalf("proxy rotated the KEK: %v", err)
	}
	t.Logf("proxy policy, rotate: %v", err)
	rep, err := kek.Rotate(t.Context(), deks, rotator)
	if err != nil || rep.Rewrapped != 1 {
		t.Fatalf("rotate policy: %v %+v", err, rep)
	}
	e, _ := deks.Get(t.Context(), "deks/"+kek.FirstKID)
	_, err = rotator.Unwrap(t.Context(), string(e.Value[strings.Index(string(e.Value), "vault:v"):strings.LastIndex(string(e.Value), `"`)]))
	if !errors.As(err, &pe) || pe.Path != "transit/decrypt/sealrun-kek" {
		t.Fatalf("rotate policy can decrypt DEKs: %v", err)
	}
	if _, err := kek.Ring(t.Context(), deks, proxy); err != nil {
		t.Fatalf("proxy after rotation: %v", err)
	}
}

// TestRingWithLegacyKey: after switching an overlay to Transit, values
// sealed by the Custodia master key still open; new values use the DEK.
func TestRingWithLegacyKey(t *testing.T) {
	_, tr := transitKey(t, "legacy-test")
	legacy, err := overlay.LoadKeyFile(filepath.Join(t.TempDir(), "master.key"), true)
	if err != nil {
		t.Fatal(err)
	}
	legacyRing, _ := overlay.NewKeyRing(legacy)
	data := memory.New()
	old, err := overlay.New(memory.New(), legacyRing, overlay.Pinning).Seal("hosts/h1", []byte("old"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := data.Put(t.Context(), "hosts/h1", []byte(old), driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	ring, err := kek.Ring(t.Context(), memory.New(), tr, legacy)
	if err != nil {
		t.Fatal(err)
	}
	ov := overlay.New(data, ring, overlay.Pinning)
	if e, err := ov.Get(t.Context(), "hosts/h1"); err != nil || string(e.Value) != "old" {
		t.Fatalf("legacy value: %v", err)
	}
	ct, err := ov.Seal("hosts/h2", []byte("new"))
	if err != nil || !strings.Contains(headerOf(t, ct), `"kid":"`+kek.FirstKID+`"`) {
		t.Fatalf("new values must be sealed with the DEK: %v %s", err, headerOf(t, ct))
	}
}
