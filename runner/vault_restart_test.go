package runner

import (
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	dto "github.com/prometheus/client_model/go"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/vault"
)

// TestVaultRestartDuringRun: the runner's keys live in a real, file-backed
// Vault behind the proxy. Vault crashes mid-run and comes back sealed; it is
// unsealed as an operator would. Messages published before, during and after
// the outage are each run exactly once and answered; the runner reports
// itself not ready while its key source is unreachable, and a signing key
// added after the restart reaches it without a restart of its own.
func TestVaultRestartDuringRun(t *testing.T) {
	v := testenv.FileVault(t)
	ctx := t.Context()
	if err := v.Client().Sys().MountWithContext(ctx, "secret", &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		t.Fatal(err)
	}
	p := startKeyProxyOn(t, vault.New(v.Client(), vault.Options{Mount: "secret", Prefix: "sealrun"}))
	q, q2 := fixPrefix+"vault", fixPrefix+"v2_vault"
	exec := &countingExecutor{}
	h := newHarness(t, harnessOpt{queues: []string{q, q2}, responses: true, exec: exec,
		keys: func(KeySource) KeySource { return &ProxyKeySource{Client: p.client} }})

	const perPhase = 60
	publish := func(queue string, signer *envelope.SigningPrivateKey, n int) {
		bodies := make([][]byte, n)
		for i := range bodies {
			var err error
			bodies[i], err = envelope.SealHPKE([]byte(testRequest), fixHPKE.Public(), signer, envelope.SealHPKEOptions{Queue: queue})
			if err != nil {
				t.Fatal(err)
			}
		}
		h.publish(queue, bodies...)
	}
	done := func() int { return int(exec.total.Load()) }

	publish(q, fixSign, perPhase)
	eventually(t, 30*time.Second, "first batch run", func() bool { return done() == perPhase })

	// Crash Vault. The proxy's watch on it fails, the runner's key reload
	// fails, and the runner says so on /readyz — but it keeps the keys it
	// has, so work that needs no new key goes on.
	v.Stop()
	eventually(t, 30*time.Second, "runner reports the key source down", func() bool {
		return h.r.notReady() == "key source unreachable"
	})
	publish(q, fixSign, perPhase)
	eventually(t, 30*time.Second, "second batch run during the outage", func() bool { return done() == 2*perPhase })

	// Vault returns sealed; unsealing it restores the key source.
	v.Start()
	v.Unseal()
	eventually(t, 60*time.Second, "runner ready again", func() bool { return h.r.notReady() == "" })

	// A signing key for a new queue prefix, written to Vault after the
	// restart, reaches the runner through the proxy's watch.
	reloads := okReloads(t, h.r)
	if _, err := p.store.Put(ctx, &secrets.SigningKey{QueuePrefix: fixPrefix + "v2_", PublicKey: fixOther.Public().AuthorizedKey()}, driver.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "new signing key loaded", func() bool {
		return okReloads(t, h.r) > reloads && h.r.notReady() == ""
	})
	publish(q2, fixOther, perPhase)
	eventually(t, 30*time.Second, "third batch run", func() bool { return done() == 3*perPhase })

	// Every message ran exactly once, was answered, and has a finished
	// JobRecord; nothing was dead-lettered or left in a queue.
	for id, n := range exec.counts() {
		if n != 1 {
			t.Errorf("message %s ran %d times", id, n)
		}
	}
	if got := len(h.finalReports(envelope.ResponseQueue(q), 2*perPhase, 30*time.Second)); got != 2*perPhase {
		t.Errorf("%s: %d responses, want %d", q, got, 2*perPhase)
	}
	if got := len(h.finalReports(envelope.ResponseQueue(q2), perPhase, 30*time.Second)); got != perPhase {
		t.Errorf("%s: %d responses, want %d", q2, got, perPhase)
	}
	finished := 0
	for _, rec := range h.jobs() {
		if !rec.Finished.IsZero() {
			finished++
		}
	}
	if finished != 3*perPhase {
		t.Errorf("%d finished JobRecords, want %d", finished, 3*perPhase)
	}
	for _, queue := range []string{q, q2} {
		if n := h.queueLen(queue); n != 0 {
			t.Errorf("%s still holds %d messages", queue, n)
		}
	}
	if n := h.count(outcomeRejected); n != 0 {
		t.Errorf("%d messages rejected", n)
	}
}

// okReloads is the runner's count of successful key reloads.
func okReloads(t testing.TB, r *Runner) float64 {
	t.Helper()
	var m dto.Metric
	if err := r.m.keyReloads.WithLabelValues("ok").Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
