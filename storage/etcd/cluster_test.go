package etcd_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/drivertest"
	"github.com/sealrun/sealrun/storage/etcd"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// The conformance suite holds on a 3-member cluster reached through a
// client of all its members, as a sealrun process configured with several
// endpoints is.
func TestClusterConformance(t *testing.T) {
	c := testenv.SharedEtcdCluster(t)
	client := c.Client(t)
	n := 0
	drivertest.Run(t, func(t *testing.T) driver.Driver {
		n++
		return etcd.New(client, fmt.Sprintf("/cluster-conformance/%d/", n))
	})
}

// casOutcome is one compare-and-set attempt: what it tried to write and
// what the driver answered.
type casOutcome struct {
	tag  string // unique per attempt, written with the value
	from int64  // the counter value it read
	rev  int64  // the revision Put returned (ok only)
	code driver.Code
}

// Compare-and-set stays linearizable across a leader kill: several writers
// increment one counter by CAS through clients of all members while the
// leader is SIGKILLed. etcd's own history of the key (every revision, read
// back afterwards) must be one unbroken chain 1, 2, 3..., each step written
// by exactly one attempt; every attempt answered OK is in it at the
// revision it was told; every attempt answered Conflict is not. Attempts
// that failed otherwise (the leader died mid-call) may or may not have
// landed: the history says which, and the chain still holds.
func TestClusterCompareAndSetAcrossLeaderKill(t *testing.T) {
	c := testenv.SharedEtcdCluster(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const prefix, key = "/cluster-cas/", "counter"
	setup := c.Client(t)
	start, err := etcd.New(setup, prefix).Put(ctx, key, []byte("0/init"), driver.PutOptions{IfAbsent: true})
	if err != nil {
		t.Fatal(err)
	}

	const writers, perWriter = 4, 60
	var mu sync.Mutex
	var outcomes []casOutcome
	var wg sync.WaitGroup
	var halfway sync.WaitGroup
	halfway.Add(writers)
	for w := range writers {
		d := etcd.New(c.Client(t), prefix) // one client each, as separate processes would have
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				if i == perWriter/3 {
					halfway.Done()
				}
				e, err := bounded(ctx, func(ctx context.Context) (driver.Entry, error) { return d.Get(ctx, key) })
				if err != nil {
					continue // no answer during the election: read again
				}
				n, _ := counterOf(e.Value)
				o := casOutcome{tag: fmt.Sprintf("w%d-%d", w, i), from: n}
				rev, err := bounded(ctx, func(ctx context.Context) (int64, error) {
					return d.Put(ctx, key, []byte(fmt.Sprintf("%d/%s", n+1, o.tag)), driver.PutOptions{IfRevision: e.Revision})
				})
				o.rev, o.code = rev, d.ErrorCode(err)
				mu.Lock()
				outcomes = append(outcomes, o)
				mu.Unlock()
			}
		}()
	}
	halfway.Wait()
	killed, err := c.KillLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed leader member %d mid-run", killed)
	wg.Wait()

	// etcd's history of the key, from its creation on.
	hist := keyHistory(t, ctx, setup, prefix+key, start)
	byTag := map[string]int64{}
	for i, h := range hist {
		n, tag := counterOf(h.value)
		if n != int64(i) {
			t.Fatalf("history step %d holds counter %d (%q): a write was lost or applied twice", i, n, h.value)
		}
		if _, dup := byTag[tag]; dup {
			t.Fatalf("attempt %s appears twice in the history", tag)
		}
		byTag[tag] = h.rev
	}
	var ok, conflict, other int
	for _, o := range outcomes {
		rev, landed := byTag[o.tag]
		switch o.code {
		case driver.OK:
			ok++
			if !landed || rev != o.rev {
				t.Errorf("attempt %s answered OK at revision %d but history has it at %d (landed %v)", o.tag, o.rev, rev, landed)
			}
		case driver.Conflict:
			conflict++
			if landed {
				t.Errorf("attempt %s answered Conflict but is in the history", o.tag)
			}
		default:
			other++
		}
	}
	if ok == 0 || len(hist)-1 < ok {
		t.Fatalf("%d OK answers, %d history steps", ok, len(hist)-1)
	}
	t.Logf("%d attempts: %d ok, %d conflict, %d unanswered (%d of those landed); %d increments in etcd's history",
		len(outcomes), ok, conflict, other, len(hist)-1-ok, len(hist)-1)
}

// bounded runs one call with its own 5s bound, so a call stuck on a dead
// member gives up and the caller retries.
func bounded[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return f(c)
}

func counterOf(v []byte) (int64, string) {
	s, tag, _ := strings.Cut(string(v), "/")
	n, _ := strconv.ParseInt(s, 10, 64)
	return n, tag
}

type histEntry struct {
	rev   int64
	value []byte
}

// keyHistory reads every version of key from revision from on, with a
// watch from that revision (etcd keeps history until compacted, which the
// test cluster never is), up to the current revision.
func keyHistory(t *testing.T, ctx context.Context, cli *clientv3.Client, key string, from int64) []histEntry {
	t.Helper()
	head, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out []histEntry
	for resp := range cli.Watch(wctx, key, clientv3.WithRev(from)) {
		if err := resp.Err(); err != nil {
			t.Fatal(err)
		}
		for _, ev := range resp.Events {
			out = append(out, histEntry{ev.Kv.ModRevision, ev.Kv.Value})
			if ev.Kv.ModRevision >= head.Kvs[0].ModRevision {
				return out
			}
		}
	}
	t.Fatal("history watch ended early")
	return nil
}

// A watch keeps its place across a leader kill: every change below the
// prefix made while the leader dies and a new one is elected arrives once,
// in revision order, none missing, none repeated. (etcd's client resumes a
// broken watch stream on another member from the revision after the last
// one it delivered.)
func TestClusterWatchAcrossLeaderKill(t *testing.T) {
	c := testenv.SharedEtcdCluster(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const prefix = "/cluster-watch/"
	wd := etcd.New(c.Client(t), prefix)
	events, err := wd.Watch(ctx, "dir")
	if err != nil {
		t.Fatal(err)
	}
	d := etcd.New(c.Client(t), prefix)
	const n = 200
	written := make(chan int64, n)
	var killed time.Time
	var failover time.Duration
	go func() {
		defer close(written)
		for i := range n {
			if i == n/3 {
				if _, err := c.KillLeader(ctx); err != nil {
					t.Error(err)
					return
				}
				killed = time.Now()
			}
			// IfAbsent makes a retry after an unanswered attempt safe: it
			// either lands once or finds the first attempt's key.
			for ctx.Err() == nil {
				k := fmt.Sprintf("dir/k%03d", i)
				rev, err := bounded(ctx, func(ctx context.Context) (int64, error) {
					return d.Put(ctx, k, []byte("v"), driver.PutOptions{IfAbsent: true})
				})
				if err == nil {
					if i == n/3 {
						failover = time.Since(killed)
					}
					written <- rev
					break
				}
				if d.ErrorCode(err) == driver.Conflict {
					e, gerr := bounded(ctx, func(ctx context.Context) (driver.Entry, error) { return d.Get(ctx, k) })
					if gerr == nil {
						written <- e.Revision
						break
					}
				}
			}
		}
	}()
	var revs []int64
	for r := range written {
		revs = append(revs, r)
	}
	if len(revs) != n {
		t.Fatalf("wrote %d of %d keys", len(revs), n)
	}
	seen := map[string]bool{}
	var last int64
	for i := range n {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("watch closed after %d of %d events", i, n)
			}
			if ev.Err != nil {
				t.Fatalf("watch failed after %d of %d events: %v", i, n, ev.Err)
			}
			if seen[ev.Key] {
				t.Fatalf("event for %s repeated", ev.Key)
			}
			seen[ev.Key] = true
			if want := fmt.Sprintf("dir/k%03d", i); ev.Key != want || ev.Revision != revs[i] || ev.Revision <= last {
				t.Fatalf("event %d: %s at %d, want %s at %d (previous %d)", i, ev.Key, ev.Revision, want, revs[i], last)
			}
			last = ev.Revision
		case <-time.After(30 * time.Second):
			t.Fatalf("no event %d of %d within 30s", i, n)
		}
	}
	t.Logf("measured: first write answered %v after the leader was SIGKILLed", failover)
}
