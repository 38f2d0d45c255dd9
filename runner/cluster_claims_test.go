package runner

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/memory"
)

// Job claims stay exclusive across an etcd leader kill. Several runner
// "processes" (each its own client of a real 3-member cluster and its own
// owner name) race to claim the same messages while the leader is
// SIGKILLed. A claim call that fails is retried, as the broker's redelivery
// would retry it; a call that failed after landing finds its own claim and
// takes it. Every message must end with exactly one winner (no two
// claimants run it, none is left unclaimed) and its record must name that
// winner.
func TestClaimsAcrossEtcdLeaderKill(t *testing.T) {
	c := testenv.StartEtcdCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	const runners, messages = 4, 80
	jobs := make([]*Jobs, runners)
	var reader *storage.Service
	for i := range jobs {
		st, err := storage.New(memory.New(), etcd.New(c.Client(t), "/claims/"), storage.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		jobs[i] = &Jobs{Store: st, Owner: fmt.Sprintf("host%d.1", i)}
		reader = st
	}
	var mu sync.Mutex
	winners := map[string][]string{}
	retries := 0
	var wg sync.WaitGroup
	var third sync.WaitGroup
	third.Add(runners)
	for _, j := range jobs {
		wg.Go(func() {
			order := rand.Perm(messages)
			for n, m := range order {
				if n == messages/3 {
					third.Done()
				}
				id := fmt.Sprintf("msg-%03d", m)
				for {
					cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
					cl, _, err := j.Claim(cctx, "q", id, time.Now())
					ccancel()
					if err != nil {
						if ctx.Err() != nil {
							t.Errorf("claim %s: %v", id, err)
							return
						}
						mu.Lock()
						retries++
						mu.Unlock()
						continue
					}
					if cl == verdictNew || cl == verdictTakeover {
						mu.Lock()
						winners[id] = append(winners[id], j.Owner)
						mu.Unlock()
					}
					break
				}
			}
		})
	}
	third.Wait()
	killed, err := c.KillLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for m := range messages {
		id := fmt.Sprintf("msg-%03d", m)
		w := winners[id]
		if len(w) != 1 {
			t.Errorf("%s won by %v, want exactly one claimant", id, w)
			continue
		}
		rec := &secrets.JobRecord{MessageID: id}
		if _, err := reader.Get(ctx, rec); err != nil || rec.Owner != w[0] {
			t.Errorf("%s: record owner %q (%v), winner %s", id, rec.Owner, err, w[0])
		}
	}
	t.Logf("%d runners x %d messages, leader member %d SIGKILLed mid-run: %d claim calls failed and were retried; every message has one winner",
		runners, messages, killed, retries)
}
