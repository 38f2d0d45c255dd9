// Package drivertest is the conformance suite every storage driver passes.
// A new backend is done when Run is green against a real instance of it.
package drivertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/sealrun/sealrun/storage/driver"
)

// Opener returns a fresh, empty driver for one subtest; it registers its own
// cleanup with t.
type Opener func(t *testing.T) driver.Driver

// eventTimeout bounds waits for watch events; polling drivers need a few
// poll intervals.
const eventTimeout = 10 * time.Second

// Run runs the conformance suite against drivers from open.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(*testing.T, driver.Driver)
	}{
		{"RoundTrip", testRoundTrip},
		{"MissingKey", testMissingKey},
		{"CompareAndSet", testCompareAndSet},
		{"List", testList},
		{"Watch", testWatch},
		{"ContextCanceled", testContextCanceled},
		{"LargeValue", testLargeValue},
		{"KeyShapes", testKeyShapes},
		{"InvalidKeys", testInvalidKeys},
		// The batch cases run against drivers that implement driver.Batcher.
		{"BatchRoundTrip", batchCase(testBatchRoundTrip)},
		{"BatchAllOrNothing", batchCase(testBatchAllOrNothing)},
		{"BatchWatch", batchCase(testBatchWatch)},
		{"BatchLimits", batchCase(testBatchLimits)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func wantCode(t *testing.T, d driver.Driver, err error, want driver.Code, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: got no error, want %v", what, want)
	}
	if got := d.ErrorCode(err); got != want {
		t.Fatalf("%s: got code %v (%v), want %v", what, got, err, want)
	}
}

func mustPut(t *testing.T, d driver.Driver, key string, value []byte, o driver.PutOptions) int64 {
	t.Helper()
	rev, err := d.Put(ctx(t), key, value, o)
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return rev
}

func mustGet(t *testing.T, d driver.Driver, key string) driver.Entry {
	t.Helper()
	e, err := d.Get(ctx(t), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return e
}

func testRoundTrip(t *testing.T, d driver.Driver) {
	rev1 := mustPut(t, d, "rt/one", []byte("first"), driver.PutOptions{})
	e := mustGet(t, d, "rt/one")
	if !bytes.Equal(e.Value, []byte("first")) || e.Revision != rev1 {
		t.Fatalf("Get = %q@%d, want %q@%d", e.Value, e.Revision, "first", rev1)
	}
	rev2 := mustPut(t, d, "rt/one", []byte("second"), driver.PutOptions{})
	if rev2 <= rev1 {
		t.Fatalf("revision after overwrite = %d, want > %d", rev2, rev1)
	}
	if e := mustGet(t, d, "rt/one"); !bytes.Equal(e.Value, []byte("second")) || e.Revision != rev2 {
		t.Fatalf("Get after overwrite = %q@%d", e.Value, e.Revision)
	}
	bin := []byte{0, 1, 2, 0xff, 0xfe, '\n'}
	mustPut(t, d, "rt/binary", bin, driver.PutOptions{})
	if e := mustGet(t, d, "rt/binary"); !bytes.Equal(e.Value, bin) {
		t.Fatalf("binary value changed: %x", e.Value)
	}
	if err := d.Delete(ctx(t), "rt/one", driver.DeleteOptions{}); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	_, err := d.Get(ctx(t), "rt/one")
	wantCode(t, d, err, driver.NotFound, "Get after Delete")
}

func testMissingKey(t *testing.T, d driver.Driver) {
	_, err := d.Get(ctx(t), "missing/key")
	wantCode(t, d, err, driver.NotFound, "Get missing")
	wantCode(t, d, d.Delete(ctx(t), "missing/key", driver.DeleteOptions{}), driver.NotFound, "Delete missing")
}

func testCompareAndSet(t *testing.T, d driver.Driver) {
	rev := mustPut(t, d, "cas/k", []byte("v1"), driver.PutOptions{IfAbsent: true})
	_, err := d.Put(ctx(t), "cas/k", []byte("v2"), driver.PutOptions{IfAbsent: true})
	wantCode(t, d, err, driver.Conflict, "create-if-absent over an existing key")

	rev2 := mustPut(t, d, "cas/k", []byte("v2"), driver.PutOptions{IfRevision: rev})
	_, err = d.Put(ctx(t), "cas/k", []byte("v3"), driver.PutOptions{IfRevision: rev})
	wantCode(t, d, err, driver.Conflict, "update with a stale revision")
	if e := mustGet(t, d, "cas/k"); string(e.Value) != "v2" || e.Revision != rev2 {
		t.Fatalf("after failed CAS: %q@%d, want v2@%d (nothing lost)", e.Value, e.Revision, rev2)
	}
	wantCode(t, d, d.Delete(ctx(t), "cas/k", driver.DeleteOptions{IfRevision: rev}), driver.Conflict, "delete with a stale revision")
	if err := d.Delete(ctx(t), "cas/k", driver.DeleteOptions{IfRevision: rev2}); err != nil {
		t.Fatalf("delete with current revision: %v", err)
	}
	// After deletion the key can be created again.
	mustPut(t, d, "cas/k", []byte("v4"), driver.PutOptions{IfAbsent: true})
}

func testList(t *testing.T, d driver.Driver) {
	for _, k := range []string{"ls/a/b/2", "ls/a/b/1", "ls/a/bc", "ls/a/b/deep/x", "ls/z"} {
		mustPut(t, d, k, []byte("x"), driver.PutOptions{})
	}
	for _, prefix := range []string{"ls/a/b", "ls/a/b/"} {
		got, err := d.List(ctx(t), prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", prefix, err)
		}
		if want := []string{"ls/a/b/1", "ls/a/b/2", "ls/a/b/deep/x"}; !slices.Equal(got, want) {
			t.Fatalf("List(%q) = %q, want %q (sorted, no sibling ls/a/bc)", prefix, got, want)
		}
	}
	got, err := d.List(ctx(t), "ls/none")
	if err != nil || len(got) != 0 {
		t.Fatalf("List(empty dir) = %q, %v; want none, nil", got, err)
	}
	all, err := d.List(ctx(t), "")
	if err != nil || !slices.IsSorted(all) || len(all) != 5 {
		t.Fatalf("List(\"\") = %q, %v; want the 5 keys sorted", all, err)
	}
	_, err = d.List(ctx(t), "ls/../etc")
	wantCode(t, d, err, driver.InvalidKey, "List with ..")
}

func testWatch(t *testing.T, d driver.Driver) {
	wctx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	ch, err := d.Watch(wctx, "w/dir")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	next := func() driver.Event {
		t.Helper()
		select {
		case e, ok := <-ch:
			if !ok {
				t.Fatal("watch channel closed early")
			}
			if e.Err != nil {
				t.Fatalf("watch failed: %v", e.Err)
			}
			return e
		case <-time.After(eventTimeout):
			t.Fatal("no watch event")
		}
		return driver.Event{}
	}
	// A sibling with the same string prefix must not be reported.
	mustPut(t, d, "w/dirx", []byte("no"), driver.PutOptions{})
	type ev struct {
		typ driver.EventType
		key string
	}
	steps := []struct {
		do   func() int64
		want ev
	}{
		{func() int64 { return mustPut(t, d, "w/dir/a", []byte("1"), driver.PutOptions{}) }, ev{driver.EventPut, "w/dir/a"}},
		{func() int64 { return mustPut(t, d, "w/dir/b/c", []byte("2"), driver.PutOptions{}) }, ev{driver.EventPut, "w/dir/b/c"}},
		{func() int64 { return mustPut(t, d, "w/dir/a", []byte("3"), driver.PutOptions{}) }, ev{driver.EventPut, "w/dir/a"}},
		{func() int64 {
			if err := d.Delete(ctx(t), "w/dir/a", driver.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			return 0
		}, ev{driver.EventDelete, "w/dir/a"}},
	}
	// Each step waits for its event, so polling drivers (which coalesce
	// changes within one interval) are held to the same order as streaming ones.
	for i, s := range steps {
		rev := s.do()
		e := next()
		if (ev{e.Type, e.Key}) != s.want {
			t.Fatalf("event %d = %v %q, want %v %q", i, e.Type, e.Key, s.want.typ, s.want.key)
		}
		if rev != 0 && e.Revision != rev {
			t.Fatalf("event %d revision = %d, want %d", i, e.Revision, rev)
		}
	}
	cancel()
	deadline := time.After(eventTimeout)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("watch channel not closed after its context ended")
		}
	}
}

func testContextCanceled(t *testing.T, d driver.Driver) {
	mustPut(t, d, "ctx/k", []byte("v"), driver.PutOptions{})
	c, cancel := context.WithCancel(context.Background())
	cancel()
	calls := map[string]error{}
	_, calls["Get"] = d.Get(c, "ctx/k")
	_, calls["Put"] = d.Put(c, "ctx/k", []byte("lost"), driver.PutOptions{})
	calls["Delete"] = d.Delete(c, "ctx/k", driver.DeleteOptions{})
	_, calls["List"] = d.List(c, "ctx")
	for name, err := range calls {
		if err == nil {
			t.Errorf("%s with a cancelled context: no error", name)
		} else if !errors.Is(err, context.Canceled) && d.ErrorCode(err) != driver.Canceled {
			t.Errorf("%s with a cancelled context: %v (code %v), want Canceled", name, err, d.ErrorCode(err))
		}
	}
	if e := mustGet(t, d, "ctx/k"); string(e.Value) != "v" {
		t.Fatalf("value changed by cancelled calls: %q", e.Value)
	}
}

func testLargeValue(t *testing.T, d driver.Driver) {
	big := make([]byte, 1<<20)
	_, _ = rand.Read(big)
	mustPut(t, d, "large/1MiB", big, driver.PutOptions{})
	if e := mustGet(t, d, "large/1MiB"); !bytes.Equal(e.Value, big) {
		t.Fatalf("1 MiB value changed (len %d)", len(e.Value))
	}
}

func testKeyShapes(t *testing.T, d driver.Driver) {
	keys := []string{"unicode/ünïcødé/✓", "deep/a/b/c/d/e/f", "spaces/a b", "punct/q?x#y%z&w=1", "dots/v1.2.3/.hidden"}
	for i, k := range keys {
		v := []byte(fmt.Sprintf("value-%d", i))
		mustPut(t, d, k, v, driver.PutOptions{})
		if e := mustGet(t, d, k); !bytes.Equal(e.Value, v) {
			t.Fatalf("Get(%q) = %q, want %q", k, e.Value, v)
		}
	}
	// '?' and '#' must not truncate a name into another one (Custodia's bug).
	_, err := d.Get(ctx(t), "punct/q")
	wantCode(t, d, err, driver.NotFound, "Get of a truncated name")
	got, err := d.List(ctx(t), "unicode")
	if err != nil || !slices.Equal(got, []string{"unicode/ünïcødé/✓"}) {
		t.Fatalf("List(unicode) = %q, %v", got, err)
	}
}

func testInvalidKeys(t *testing.T, d driver.Driver) {
	for _, k := range []string{"", "..", "a/../b", "a/./b", "/abs", "trail/", "a//b", "nul\x00", "bad\xffutf8", string(bytes.Repeat([]byte("k"), driver.MaxKeyLen+1))} {
		_, err := d.Put(ctx(t), k, []byte("v"), driver.PutOptions{})
		wantCode(t, d, err, driver.InvalidKey, fmt.Sprintf("Put(%q)", k))
		_, err = d.Get(ctx(t), k)
		wantCode(t, d, err, driver.InvalidKey, fmt.Sprintf("Get(%q)", k))
		wantCode(t, d, d.Delete(ctx(t), k, driver.DeleteOptions{}), driver.InvalidKey, fmt.Sprintf("Delete(%q)", k))
	}
}

// batchCase runs fn for a driver.Batcher. A wrapping driver whose inner
// driver cannot batch must say so with ErrBatchUnsupported and write nothing.
func batchCase(fn func(*testing.T, driver.Driver, driver.Batcher)) func(*testing.T, driver.Driver) {
	return func(t *testing.T, d driver.Driver) {
		b, ok := d.(driver.Batcher)
		if !ok {
			// Skipped, not passed: the count shows what was not proven.
			t.Skip("driver has no batches (no driver.Batcher; e.g. Vault KV v2 has no multi-key transaction)")
		}
		_, err := b.PutBatch(ctx(t), []driver.BatchPut{{Key: "probe/k", Value: []byte("v")}})
		if errors.Is(err, driver.ErrBatchUnsupported) {
			_, gerr := d.Get(ctx(t), "probe/k")
			wantCode(t, d, gerr, driver.NotFound, "Get after an unsupported batch")
			t.Skip("inner driver cannot batch: PutBatch said ErrBatchUnsupported and wrote nothing")
		}
		if err != nil {
			t.Fatalf("PutBatch probe: %v", err)
		}
		fn(t, d, b)
	}
}

func testBatchRoundTrip(t *testing.T, d driver.Driver, b driver.Batcher) {
	if revs, err := b.PutBatch(ctx(t), nil); err != nil || len(revs) != 0 {
		t.Fatalf("empty PutBatch = %v, %v; want nothing, nil", revs, err)
	}
	old := mustPut(t, d, "bt/c", []byte("old"), driver.PutOptions{})
	puts := []driver.BatchPut{
		{Key: "bt/a", Value: []byte("1"), Opts: driver.PutOptions{IfAbsent: true}},
		{Key: "bt/b/deep", Value: []byte{0, 0xff, '\n'}},
		{Key: "bt/c", Value: []byte("3"), Opts: driver.PutOptions{IfRevision: old}},
	}
	revs, err := b.PutBatch(ctx(t), puts)
	if err != nil {
		t.Fatalf("PutBatch: %v", err)
	}
	if len(revs) != len(puts) {
		t.Fatalf("PutBatch returned %d revisions for %d puts", len(revs), len(puts))
	}
	for i, p := range puts {
		e := mustGet(t, d, p.Key)
		if !bytes.Equal(e.Value, p.Value) || e.Revision != revs[i] {
			t.Fatalf("Get(%q) = %q@%d, want %q@%d (revisions in put order)", p.Key, e.Value, e.Revision, p.Value, revs[i])
		}
		if revs[i] <= old || (i > 0 && revs[i] < revs[i-1]) {
			t.Fatalf("revisions %v: want each newer than %d and non-decreasing", revs, old)
		}
	}
	t.Run("GetBatch", func(t *testing.T) {
		g, ok := d.(driver.BatchGetter)
		if !ok {
			t.Skip("driver batches writes but has no driver.BatchGetter")
		}
		keys := []string{"bt/c", "bt/missing", "bt/a"}
		got, err := g.GetBatch(ctx(t), keys)
		if err != nil {
			t.Fatalf("GetBatch: %v", err)
		}
		if len(got) != len(keys) {
			t.Fatalf("GetBatch returned %d entries for %d keys", len(got), len(keys))
		}
		want := []driver.Entry{{Key: "bt/c", Value: []byte("3"), Revision: revs[2]}, {Key: "bt/missing"}, {Key: "bt/a", Value: []byte("1"), Revision: revs[0]}}
		for i, w := range want {
			if got[i].Key != w.Key || !bytes.Equal(got[i].Value, w.Value) || got[i].Revision != w.Revision {
				t.Fatalf("GetBatch[%d] = %q %q@%d, want %q %q@%d (missing: nil value, revision 0)",
					i, got[i].Key, got[i].Value, got[i].Revision, w.Key, w.Value, w.Revision)
			}
		}
	})
}

func testBatchAllOrNothing(t *testing.T, d driver.Driver, b driver.Batcher) {
	rev := mustPut(t, d, "ban/exists", []byte("keep"), driver.PutOptions{})
	check := func(what string) {
		t.Helper()
		for _, k := range []string{"ban/new1", "ban/new2"} {
			_, err := d.Get(ctx(t), k)
			wantCode(t, d, err, driver.NotFound, what+": Get("+k+")")
		}
		if e := mustGet(t, d, "ban/exists"); string(e.Value) != "keep" || e.Revision != rev {
			t.Fatalf("%s: existing key is %q@%d, want keep@%d", what, e.Value, e.Revision, rev)
		}
	}
	for _, tc := range []struct {
		what string
		opts driver.PutOptions
	}{
		{"IfAbsent over an existing key", driver.PutOptions{IfAbsent: true}},
		{"IfRevision with a stale revision", driver.PutOptions{IfRevision: rev - 1}},
		{"IfRevision on a missing key", driver.PutOptions{IfRevision: rev}},
	} {
		key := "ban/exists"
		if tc.what == "IfRevision on a missing key" {
			key = "ban/absent"
		}
		_, err := b.PutBatch(ctx(t), []driver.BatchPut{
			{Key: "ban/new1", Value: []byte("x"), Opts: driver.PutOptions{IfAbsent: true}},
			{Key: key, Value: []byte("lost"), Opts: tc.opts},
			{Key: "ban/new2", Value: []byte("y")},
		})
		wantCode(t, d, err, driver.Conflict, "PutBatch with "+tc.what)
		check(tc.what)
	}
	// With the right conditions the same batch goes through.
	revs, err := b.PutBatch(ctx(t), []driver.BatchPut{
		{Key: "ban/new1", Value: []byte("x"), Opts: driver.PutOptions{IfAbsent: true}},
		{Key: "ban/exists", Value: []byte("new"), Opts: driver.PutOptions{IfRevision: rev}},
	})
	if err != nil {
		t.Fatalf("PutBatch with current conditions: %v", err)
	}
	if e := mustGet(t, d, "ban/exists"); string(e.Value) != "new" || e.Revision != revs[1] {
		t.Fatalf("after PutBatch: %q@%d, want new@%d", e.Value, e.Revision, revs[1])
	}
}

func testBatchWatch(t *testing.T, d driver.Driver, b driver.Batcher) {
	wctx, cancel := context.WithCancel(ctx(t))
	defer cancel()
	ch, err := d.Watch(wctx, "bw")
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	keys := []string{"bw/1", "bw/2/x", "bw/3"}
	puts := make([]driver.BatchPut, len(keys))
	for i, k := range keys {
		puts[i] = driver.BatchPut{Key: k, Value: []byte("v"), Opts: driver.PutOptions{IfAbsent: true}}
	}
	revs, err := b.PutBatch(ctx(t), puts)
	if err != nil {
		t.Fatalf("PutBatch: %v", err)
	}
	want := map[string]int64{}
	for i, k := range keys {
		want[k] = revs[i]
	}
	timeout := time.After(eventTimeout)
	for len(want) > 0 {
		select {
		case e, ok := <-ch:
			if !ok || e.Err != nil {
				t.Fatalf("watch ended: %v", e.Err)
			}
			rev, ok := want[e.Key]
			if !ok || e.Type != driver.EventPut {
				t.Fatalf("unexpected event %v %q", e.Type, e.Key)
			}
			// Polling drivers may only see the latest revision; streaming
			// ones report exactly the batch's.
			if e.Revision < rev {
				t.Fatalf("event for %q has revision %d, want %d", e.Key, e.Revision, rev)
			}
			delete(want, e.Key)
		case <-timeout:
			t.Fatalf("no watch event for %v", want)
		}
	}
}

func testBatchLimits(t *testing.T, d driver.Driver, b driver.Batcher) {
	_, err := b.PutBatch(ctx(t), []driver.BatchPut{{Key: "bl/a", Value: []byte("1")}, {Key: "bl/a", Value: []byte("2")}})
	wantCode(t, d, err, driver.InvalidKey, "PutBatch with a repeated key")
	_, err = b.PutBatch(ctx(t), []driver.BatchPut{{Key: "bl/b", Value: []byte("1")}, {Key: "bl/../x", Value: []byte("2")}})
	wantCode(t, d, err, driver.InvalidKey, "PutBatch with an invalid key")
	for _, k := range []string{"bl/a", "bl/b"} {
		_, err := d.Get(ctx(t), k)
		wantCode(t, d, err, driver.NotFound, "Get("+k+") after a refused batch")
	}
	// MaxBatch puts, each with both conditions, is the largest batch every
	// Batcher accepts (etcd: 2*MaxBatch compares within --max-txn-ops); both
	// conditions together cannot hold, so it is a Conflict, not a refusal.
	both := make([]driver.BatchPut, driver.MaxBatch)
	for i := range both {
		both[i] = driver.BatchPut{Key: fmt.Sprintf("bl/both/%03d", i), Value: []byte("x"), Opts: driver.PutOptions{IfAbsent: true, IfRevision: 1}}
	}
	_, err = b.PutBatch(ctx(t), both)
	wantCode(t, d, err, driver.Conflict, "PutBatch of MaxBatch puts with both conditions")
	puts := make([]driver.BatchPut, driver.MaxBatch)
	for i := range puts {
		k := fmt.Sprintf("bl/max/%03d", i)
		rev := mustPut(t, d, k, []byte("old"), driver.PutOptions{})
		puts[i] = driver.BatchPut{Key: k, Value: []byte(fmt.Sprintf("new-%d", i)), Opts: driver.PutOptions{IfRevision: rev}}
	}
	if _, err := b.PutBatch(ctx(t), puts); err != nil {
		t.Fatalf("PutBatch of MaxBatch=%d conditional puts: %v", driver.MaxBatch, err)
	}
	for _, p := range puts {
		if e := mustGet(t, d, p.Key); !bytes.Equal(e.Value, p.Value) {
			t.Fatalf("Get(%q) after max batch = %q, want %q", p.Key, e.Value, p.Value)
		}
	}
	over := append(puts, driver.BatchPut{Key: "bl/over", Value: []byte("x")})
	_, err = b.PutBatch(ctx(t), over)
	wantCode(t, d, err, driver.InvalidValue, "PutBatch over MaxBatch")
	_, err = d.Get(ctx(t), "bl/over")
	wantCode(t, d, err, driver.NotFound, "Get after an over-long batch")
}
