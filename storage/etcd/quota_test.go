package etcd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
)

// TestQuotaExhaustedAndRecovered fills a real etcd past its backend quota
// (the "disk full" alarm): the write fails as Unavailable (retry later, not
// a data error) with etcd's "database space exceeded" in the message; after
// the operator's compaction, defragmentation and alarm disarm, writes work
// again and every value written before is intact.
func TestQuotaExhaustedAndRecovered(t *testing.T) {
	c := startEtcd(t, func(ec *embed.Config) { ec.QuotaBackendBytes = 8 << 20 })
	d := etcd.New(c, "/sealrun/state/")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Ten keys rewritten over and over: the history, not the live data,
	// fills the quota, as with JobRecords updated in place.
	val := func(k, gen int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("%d-%d.", k, gen)), 100<<10/8) }
	last := map[int]int{}
	var fullErr error
	for gen := 0; gen < 1000 && fullErr == nil; gen++ {
		for k := range 10 {
			if _, err := d.Put(ctx, fmt.Sprintf("job/%d", k), val(k, gen), driver.PutOptions{}); err != nil {
				fullErr = err
				break
			}
			last[k] = gen
		}
	}
	if fullErr == nil {
		t.Fatal("100 MB of writes never hit the 8 MiB quota")
	}
	if code := d.ErrorCode(fullErr); code != driver.Unavailable {
		t.Errorf("quota error classified %v, want Unavailable (a retry after recovery succeeds)", code)
	}
	if !strings.Contains(fullErr.Error(), "database space exceeded") {
		t.Errorf("quota error %q does not say the database is full", fullErr)
	}
	t.Logf("full: %v", fullErr)
	// Reads still work while the alarm is raised.
	if _, err := d.Get(ctx, "job/0"); err != nil {
		t.Fatalf("read during the alarm: %v", err)
	}

	// Recovery, as an operator does it: compact, defragment, disarm.
	st, err := c.Status(ctx, c.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compact(ctx, st.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Defragment(ctx, c.Endpoints()[0]); err != nil {
		t.Fatal(err)
	}
	alarms, err := c.AlarmList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(alarms.Alarms) == 0 {
		t.Fatal("no NOSPACE alarm raised")
	}
	for _, a := range alarms.Alarms {
		if _, err := c.AlarmDisarm(ctx, (*clientv3.AlarmMember)(a)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.Put(ctx, "job/after", []byte("ok"), driver.PutOptions{}); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	for k, gen := range last {
		got, err := d.Get(ctx, fmt.Sprintf("job/%d", k))
		if err != nil {
			t.Fatalf("job/%d after recovery: %v", k, err)
		}
		// The last acknowledged value, or the one whose Put hit the alarm
		// (etcd may have applied the write that raised it): never older.
		if !bytes.Equal(got.Value, val(k, gen)) && !bytes.Equal(got.Value, val(k, gen+1)) {
			first, _, _ := bytes.Cut(got.Value, []byte("."))
			t.Errorf("job/%d after recovery holds %q, want generation %d (the last acknowledged) or %d", k, first, gen, gen+1)
		}
	}
}

// startEtcd starts an etcd of its own (tweak sets its limits) on loopback
// and returns a client whose send limit is the one sealrun uses (8 MiB).
func startEtcd(t *testing.T, tweak func(*embed.Config)) *clientv3.Client {
	t.Helper()
	ec := embed.NewConfig()
	ec.Dir = t.TempDir()
	loop := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{loop}, []url.URL{loop}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{loop}, []url.URL{loop}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	if tweak != nil {
		tweak(ec)
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready")
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + e.Clients[0].Addr().String()},
		DialTimeout: 5 * time.Second, Logger: zap.NewNop(), MaxCallSendMsgSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestTooLarge: a value over etcd's request limit (its default 1.5 MiB) or
// the client's send limit is an invalid value that says why, not a
// retryable outage; nothing is written, and smaller values still are.
func TestTooLarge(t *testing.T) {
	d := etcd.New(startEtcd(t, nil), "/sealrun/state/")
	ctx := context.Background()
	for _, size := range []int{2 << 20, 9 << 20} {
		key := fmt.Sprintf("big-%d", size)
		_, err := d.Put(ctx, key, bytes.Repeat([]byte("x"), size), driver.PutOptions{})
		if d.ErrorCode(err) != driver.InvalidValue || !errors.Is(err, driver.ErrTooLarge) || !strings.Contains(fmt.Sprint(err), "max-request-bytes") {
			t.Fatalf("put of %d bytes: code %v, err %v; want InvalidValue, ErrTooLarge, naming max-request-bytes", size, d.ErrorCode(err), err)
		}
		if _, err := d.Get(ctx, key); d.ErrorCode(err) != driver.NotFound {
			t.Fatalf("after the refused put of %d bytes: %v, want not found", size, err)
		}
	}
	if _, err := d.Put(ctx, "fits", bytes.Repeat([]byte("x"), 1<<20), driver.PutOptions{}); err != nil {
		t.Fatalf("1 MiB put: %v", err)
	}
}
