//go:build chaos

package chaos

import (
	"strings"
	"testing"
	"time"

	"github.com/sealrun/sealrun/secrets"
	storageconfig "github.com/sealrun/sealrun/storage/config"
)

// TestRunnerKillTakeover: a runner process SIGKILLed with jobs in flight.
// Its claims in etcd stay live until their lease runs out, so the other
// runner, which gets the redelivered copies at once, waits — it never runs a
// job while the dead runner's claim is live — and takes them over after
// the lease: each job is answered exactly once, by the survivor, between
// 2/3 of the lease (the dead runner renewed at most a third of a lease
// before it died) and the lease plus one claim poll after the kill. The
// killed runner's job processes outlive it (their own process group) and
// run to their end unsupervised, and the survivor runs the same jobs again:
// that is the "ran twice" of a SIGKILLed runner, and it is all of it.
func TestRunnerKillTakeover(t *testing.T) {
	const lease = 3 * time.Second
	const job = 2 * time.Second
	c := startCluster(t, clusterOpts{runners: 2, proxies: 1, lease: lease, job: "sleep 2", concurrency: 2, later: 1}, t.Logf)
	msgs, _ := buildMessages(t, c.keys, 2, 0)
	col := collect(t, c.amqpURL, c.keys.resp, msgs)
	publishAll(t, c.amqpURL, msgs)
	victim, survivor := c.specs[0].id, c.specs[1].id
	waitFor(t, 30*time.Second, "both jobs running on "+victim, func() bool { return len(c.inFlight(victim, time.Now())) == 2 })
	// The survivor starts idle, so its takeover is not queued behind work
	// of its own.
	c.startRunner(1)
	inflight, kill := c.killRunner(0)
	if len(inflight) != 2 {
		t.Fatalf("in flight on %s at the kill: %v, want both jobs", victim, inflight)
	}
	waitFor(t, lease+job+30*time.Second, "both answered", func() bool { return col.answered() == 2 })
	got := col.finish()
	checkAnswers(t, got, msgs)
	checkJobRecords(t, c.stateYAML, msgs)

	starts := map[string][]jobEvent{}
	for _, e := range c.jobEvents() {
		if e.kind == "start" {
			starts[e.job] = append(starts[e.job], e)
		}
	}
	for _, m := range msgs {
		s := starts[m.job]
		if len(s) != 2 || s[0].runner != victim || s[1].runner != survivor {
			t.Errorf("job %s starts %+v, want one on %s before the kill and one on %s after", m.job, s, victim, survivor)
			continue
		}
		takeover := s[1].at.Sub(kill)
		answered, _ := col.answeredAt(m.id)
		t.Logf("job %s: taken over %v after the kill, answered %v after it (claim_lease %v, job %v)",
			m.job, takeover.Round(time.Millisecond), answered.Sub(kill).Round(time.Millisecond), lease, job)
		// The lease as the dead runner last wrote it bounds the takeover
		// from below; the lease, a claim poll (0.5s), the takeover write and
		// the job's start (on a loaded machine) from above.
		if lo, hi := lease*2/3-100*time.Millisecond, lease+3*time.Second; takeover < lo || takeover > hi {
			t.Errorf("job %s taken over %v after the kill, want within [%v, %v]", m.job, takeover, lo, hi)
		}
	}
	// The survivor owns every record now.
	cfg, err := storageconfig.Decode(strings.NewReader(c.stateYAML))
	if err != nil {
		t.Fatal(err)
	}
	st, err := storageconfig.Open(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, m := range msgs {
		rec := &secrets.JobRecord{MessageID: m.job}
		if _, err := st.Get(t.Context(), rec); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(rec.Owner, survivor+".") {
			t.Errorf("job %s: record owned by %q, want the survivor %s", m.job, rec.Owner, survivor)
		}
	}
	events := runnerEvents(t, c.runnerLogs, c.keys.pass)
	if events["waiting for it instead of running it again"] == 0 || events["taking over an unfinished run"] != 2 {
		t.Errorf("survivor log events %v: want it to wait for the live claims, then take both over", events)
	}
}
