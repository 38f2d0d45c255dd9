package migrate

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
	etcddrv "github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/overlay"
)

// The crash tests run the migration (or rotation) in a real separate
// process, the test binary re-executed with these variables set (TestMain
// hands over to crashChild), and SIGKILL it at random points.
const (
	crashChildEnv    = "SEALRUN_CRASH_CHILD" // "migrate" or "rotate"
	crashEndpointEnv = "SEALRUN_CRASH_ETCD"
	crashKeysEnv     = "SEALRUN_CRASH_KEYS" // id:hex,... current key first
	crashReportEnv   = "SEALRUN_CRASH_REPORT"
)

// Where the crash tests keep their data in etcd.
const (
	crashSrc     = "/crash/src/"
	crashSecrets = "/crash/secrets/"
	crashState   = "/crash/state/"
	crashEvery   = 100 // checkpoint interval of the migrating child
)

// crashChild is the child process: it migrates or rotates, printing
// "progress N" lines, writes its report as JSON and exits 0 only when the
// run completed without failures.
func crashChild() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "crash child:", err)
		return 1
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{os.Getenv(crashEndpointEnv)},
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return fail(err)
	}
	defer cli.Close()
	var keys []overlay.Key
	for _, kv := range strings.Split(os.Getenv(crashKeysEnv), ",") {
		id, h, _ := strings.Cut(kv, ":")
		raw, err := hex.DecodeString(h)
		if err != nil {
			return fail(errors.New("bad key material"))
		}
		k, err := overlay.NewKey(id, raw)
		if err != nil {
			return fail(err)
		}
		keys = append(keys, k)
	}
	ring, err := overlay.NewKeyRing(keys[0], keys[1:]...)
	if err != nil {
		return fail(err)
	}
	var mu sync.Mutex
	progress := func(done, _ int) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Printf("progress %d\n", done)
	}
	ctx := context.Background()
	var report any
	switch os.Getenv(crashChildEnv) {
	case "migrate":
		svc, err := storage.New(overlay.New(etcddrv.New(cli, crashSecrets), ring, overlay.Pinning),
			etcddrv.New(cli, crashState), storage.Options{Registry: registry()})
		if err != nil {
			return fail(err)
		}
		o := Options{From: "etcd:" + crashSrc, To: "crash", Verify: true, Checkpoint: true,
			CheckpointEvery: crashEvery, Concurrency: 8, OnConflict: OnConflictFail, Progress: progress}
		rep, err := Run(ctx, &EtcdSource{Client: cli, Prefix: crashSrc}, svc, o)
		if err != nil {
			return fail(err)
		}
		if rep.Failed != 0 {
			return fail(fmt.Errorf("%d items failed: %s", rep.Failed, rep.Summary()))
		}
		report = rep
	case "rotate":
		rep, err := overlay.Reencrypt(ctx, etcddrv.New(cli, crashSecrets), ring, overlay.Pinning,
			overlay.RotateOptions{BatchSize: driver.MaxBatch, Concurrency: 4, Progress: progress})
		if err != nil {
			return fail(err)
		}
		report = rep
	default:
		return fail(errors.New("unknown child mode"))
	}
	b, err := json.Marshal(report)
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(os.Getenv(crashReportEnv), b, 0o600); err != nil {
		return fail(err)
	}
	return 0
}

// crashKeys makes random master keys and their env form (current first).
func crashKeys(t *testing.T, ids ...string) ([]overlay.Key, string) {
	t.Helper()
	var keys []overlay.Key
	var env []string
	for _, id := range ids {
		raw := make([]byte, overlay.KeySize)
		rand.Read(raw)
		k, err := overlay.NewKey(id, raw)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
		env = append(env, id+":"+hex.EncodeToString(raw))
	}
	return keys, strings.Join(env, ",")
}

// crashRun runs one child. With killAt >= 0 it is SIGKILLed once it reports
// progress of at least killAt (0: as soon as it prints anything); with
// killAfter > 0 it is killed after that long whatever it reached. It returns
// the last progress seen, whether the child was killed, and its exit error.
func crashRun(t *testing.T, mode, endpoint, keys, report string, killAt int, killAfter time.Duration) (int, bool, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+mode, crashEndpointEnv+"="+endpoint,
		crashKeysEnv+"="+keys, crashReportEnv+"="+report)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var killed atomic.Bool
	kill := func() {
		if !killed.Swap(true) {
			_ = cmd.Process.Signal(syscall.SIGKILL)
		}
	}
	if killAfter > 0 {
		timer := time.AfterFunc(killAfter, kill)
		defer timer.Stop()
	}
	last := 0
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		n, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "progress "))
		if err != nil {
			continue
		}
		last = n
		if killAt >= 0 && n >= killAt {
			kill()
		}
	}
	err = cmd.Wait()
	if err != nil && !killed.Load() {
		t.Logf("child stderr: %s", stderr.String())
	}
	return last, killed.Load(), err
}

// TestMigrateSurvivesSIGKILL: a migration killed with SIGKILL at random
// points (while planning, between and during batches and checkpoint saves)
// and rerun ends with the destination equal to the source, every value
// opening, and a final report that accounts for every item.
func TestMigrateSurvivesSIGKILL(t *testing.T) {
	const n, rounds = 1500, 6
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rnd := mrand.New(mrand.NewPCG(uint64(seed), 0))
	ctx := context.Background()
	cli := testenv.Etcd(t)
	keys, keyEnv := crashKeys(t, "k1")
	want := map[string][sha256.Size]byte{}
	var ops []clientv3.Op
	for i := range n {
		name := fmt.Sprintf("s/%02d/%05d", i%17, i)
		v := make([]byte, 16+rnd.IntN(200))
		rand.Read(v)
		want[name] = sha256.Sum256(v)
		if ops = append(ops, clientv3.OpPut(crashSrc+name, string(v))); len(ops) == driver.MaxBatch || i == n-1 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = nil
		}
	}
	report := filepath.Join(t.TempDir(), "report.json")
	endpoint := cli.Endpoints()[0]
	// A killed run that got past a checkpoint save leaves a checkpoint for
	// the next run, unless a later killed run may have completed (and
	// removed it) before the kill landed.
	maxKilled, wantResume := 0, false
	var rep Report
	crashRounds(t, "migrate", endpoint, keyEnv, report, rnd, n, rounds, func(last int) {
		maxKilled = max(maxKilled, last)
		switch {
		case last == n:
			wantResume = false
		case last >= crashEvery:
			wantResume = true
		}
	}, &rep)
	// The report accounts for every item: written now or by a killed run
	// (then unchanged), each verified, nothing failed or left out.
	if rep.Total != n || rep.Failed != 0 || rep.Counts[ResultCreated]+rep.Counts[ResultUnchanged] != n {
		t.Fatalf("final report: %d items: %s", rep.Total, rep.Summary())
	}
	if wantResume && !rep.Resumed {
		t.Fatal("a killed run got past a checkpoint save, but the final run did not resume from it")
	}
	prev := 0
	for _, it := range rep.Items {
		if _, ok := want[it.Key]; !ok || it.Kind != secrets.KindRaw || !it.Verified {
			t.Fatalf("report item %+v", it)
		}
		if it.PreviousRun != "" {
			prev++
			if it.Result != ResultUnchanged {
				t.Fatalf("%s: an earlier run recorded %s, now %s", it.Key, it.PreviousRun, it.Result)
			}
		}
	}
	t.Logf("final run: %s; %d items attributed to killed runs (max killed progress %d)", rep.Summary(), prev, maxKilled)

	// The destination equals the source, value by value, and holds nothing else.
	ring, err := overlay.NewKeyRing(keys[0])
	if err != nil {
		t.Fatal(err)
	}
	ov := overlay.New(etcddrv.New(cli, crashSecrets), ring, overlay.Pinning)
	stored, err := ov.List(ctx, "")
	if err != nil || len(stored) != n {
		t.Fatalf("destination holds %d records (%v), want %d", len(stored), err, n)
	}
	for name, sum := range want {
		m := &secrets.Raw{Name: name}
		e, err := ov.Get(ctx, secrets.KindRaw+"/"+name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := json.Unmarshal(e.Value, m); err != nil || m.Name != name {
			t.Fatalf("%s: stored model does not decode (%v)", name, err)
		}
		if got := sha256.Sum256(m.Value); got != sum {
			t.Fatalf("%s: destination value differs from the source (SHA-256)", name)
		}
	}
	if c := countKeys(t, cli, crashState+KindCheckpoint+"/"); c != 0 {
		t.Fatalf("%d checkpoints left after the run completed", c)
	}
}

// TestRotateSurvivesSIGKILL: a master-key rotation killed with SIGKILL at
// random points and rerun re-seals every record exactly once under the new
// key, while readers in this process (holding both keys) see no failure.
func TestRotateSurvivesSIGKILL(t *testing.T) {
	const n, rounds = 2000, 5
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rnd := mrand.New(mrand.NewPCG(uint64(seed), 1))
	ctx := context.Background()
	cli := testenv.Etcd(t)
	keys, keyEnv := crashKeys(t, "new", "old")
	oldRing, err := overlay.NewKeyRing(keys[1])
	if err != nil {
		t.Fatal(err)
	}
	before := overlay.New(etcddrv.New(cli, crashSecrets), oldRing, overlay.Pinning)
	value := func(i int) string { return fmt.Sprintf("value-%05d", i) }
	var puts []driver.BatchPut
	for i := range n {
		puts = append(puts, driver.BatchPut{Key: fmt.Sprintf("r/%05d", i), Value: []byte(value(i))})
		if len(puts) == driver.MaxBatch || i == n-1 {
			if _, err := before.PutBatch(ctx, puts); err != nil {
				t.Fatal(err)
			}
			puts = nil
		}
	}
	// Readers that reloaded their configuration: new key current, old one
	// still opening.
	both, err := overlay.NewKeyRing(keys[0], keys[1])
	if err != nil {
		t.Fatal(err)
	}
	reader := overlay.New(etcddrv.New(cli, crashSecrets), both, overlay.Pinning)
	stop := readConcurrently(ctx, 3, n, 13, func(ctx context.Context, i int) error {
		e, err := reader.Get(ctx, fmt.Sprintf("r/%05d", i))
		if err == nil && string(e.Value) != value(i) {
			err = fmt.Errorf("record %d: wrong value", i)
		}
		return err
	})
	defer stop()

	report := filepath.Join(t.TempDir(), "rotate.json")
	endpoint := cli.Endpoints()[0]
	var rep overlay.RotateReport
	crashRounds(t, "rotate", endpoint, keyEnv, report, rnd, n, rounds, nil, &rep)
	reads, failures := stop()
	if failures != 0 || reads == 0 {
		t.Fatalf("%d of %d concurrent reads failed during the killed rotations", failures, reads)
	}
	if rep.Total != n || len(rep.Failed) != 0 || rep.Gone != 0 || rep.Resealed+rep.AlreadyCurrent != n ||
		rep.Referenced["new"] != n || len(rep.Referenced) != 1 {
		t.Fatalf("final report: %+v", rep)
	}
	t.Logf("final run: %d resealed, %d already current; %d concurrent reads, 0 failed", rep.Resealed, rep.AlreadyCurrent, reads)
	// The old key is retired: the new one alone opens every record, unchanged.
	newRing, err := overlay.NewKeyRing(keys[0])
	if err != nil {
		t.Fatal(err)
	}
	after := overlay.New(etcddrv.New(cli, crashSecrets), newRing, overlay.Pinning)
	for i := range n {
		e, err := after.Get(ctx, fmt.Sprintf("r/%05d", i))
		if err != nil || string(e.Value) != value(i) {
			t.Fatalf("r/%05d after rotation: %v", i, err)
		}
	}
}

// crashRounds runs the child in mode rounds times, each SIGKILLed at a
// random progress point or, every third round, after a random time (which
// can land before the first write), then once to completion, and decodes
// that run's report into rep. onKill, if set, gets the progress each killed
// run reached.
func crashRounds(t *testing.T, mode, endpoint, keyEnv, report string, rnd *mrand.Rand, n, rounds int, onKill func(last int), rep any) {
	t.Helper()
	for r := range rounds {
		killAt, killAfter := 1+rnd.IntN(n), time.Duration(0)
		if r%3 == 0 {
			killAt, killAfter = -1, time.Duration(50+rnd.IntN(600))*time.Millisecond
		}
		last, killed, err := crashRun(t, mode, endpoint, keyEnv, report, killAt, killAfter)
		t.Logf("round %d: kill at progress %d / after %v: killed=%v at progress %d (%v)", r, killAt, killAfter, killed, last, err)
		if !killed && err != nil {
			t.Fatalf("round %d: child failed on its own: %v", r, err)
		}
		if killed && onKill != nil {
			onKill(last)
		}
	}
	last, killed, err := crashRun(t, mode, endpoint, keyEnv, report, -1, 0)
	if err != nil || killed {
		t.Fatalf("final run: %v (progress %d)", err, last)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, rep); err != nil {
		t.Fatal(err)
	}
}
