package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func writeLog(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		uid := 1000 + i
		if err := l.Log(context.Background(), Entry{Credential: "runner-1", PeerUID: &uid, Verb: "GET", Path: "/secrets/a/b", Status: 200, Outcome: "allowed"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func verifyFile(t *testing.T, path string) (VerifyResult, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return Verify(f)
}

func TestChainVerifiesAndContinuesAcrossRestarts(t *testing.T) {
	path := writeLog(t, 5)
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
	l, err := Open(path) // a restart continues the chain
	if err != nil {
		t.Fatal(err)
	}
	l.Log(context.Background(), Entry{Verb: "PUT", Path: "/secrets/x", Status: 201, Outcome: "allowed"})
	l.Close()
	res, err := verifyFile(t, path)
	if err != nil || res.Lines != 6 || res.LastSeq != 6 || len(res.LastHash) != 64 {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

func TestTamperingIsDetected(t *testing.T) {
	path := writeLog(t, 6)
	orig, _ := os.ReadFile(path)
	lines := strings.SplitAfter(strings.TrimSuffix(string(orig), "\n"), "\n")
	edits := map[string]func([]string) []string{
		"edited line": func(l []string) []string {
			l[2] = strings.Replace(l[2], `"status":200`, `"status":201`, 1)
			return l
		},
		"removed middle line": func(l []string) []string { return append(l[:2], l[3:]...) },
		"removed first line":  func(l []string) []string { return l[1:] },
		"swapped lines":       func(l []string) []string { l[1], l[2] = l[2], l[1]; return l },
		"inserted line": func(l []string) []string {
			return append(l[:3], append([]string{l[2]}, l[3:]...)...)
		},
		"garbage line": func(l []string) []string { l[4] = "{not json}\n"; return l },
	}
	for name, edit := range edits {
		t.Run(name, func(t *testing.T) {
			l := edit(append([]string(nil), lines...))
			if !strings.HasSuffix(l[len(l)-1], "\n") {
				l[len(l)-1] += "\n"
			}
			_, err := Verify(strings.NewReader(strings.Join(l, "")))
			if err == nil || !strings.Contains(err.Error(), "line ") {
				t.Fatalf("tampering not detected: %v", err)
			}
		})
	}
}

func TestConcurrentWritersShareFsyncsAndKeepTheChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if err := l.Log(context.Background(), Entry{Credential: string(rune('a' + w)), Verb: "GET", Path: "/secrets/p", Status: 200, Outcome: "allowed"}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	l.Close()
	res, err := verifyFile(t, path)
	if err != nil || res.Lines != 400 {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

func TestTornLastLineRefusesToContinue(t *testing.T) {
	path := writeLog(t, 2)
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"time":"2026`)
	f.Close()
	if _, err := Open(path); err == nil || !strings.Contains(err.Error(), "audit verify") {
		t.Fatalf("Open on a torn log: %v", err)
	}
}

func TestWriteFailureIsSticky(t *testing.T) {
	path := writeLog(t, 1)
	l, _ := Open(path)
	l.f.Close() // simulate a failing disk
	if err := l.Log(context.Background(), Entry{Verb: "GET"}); err == nil {
		t.Fatal("write to a broken log succeeded")
	}
	if err := l.Log(context.Background(), Entry{Verb: "GET"}); err == nil || !bytes.Contains([]byte(err.Error()), []byte("refusing")) {
		t.Fatalf("second write: %v", err)
	}
}

// TestGroupCommitBatches: 16 concurrent writers (the proxy benchmark's
// concurrency) share fsyncs. Every line is durable and chained, and there
// are far fewer fsyncs than lines; one fsync per line would mean requests
// queue on the disk one by one.
func TestGroupCommitBatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 16, 40
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for range each {
				if err := l.Log(context.Background(), Entry{Credential: "runner-1", Verb: "GET", Path: "/secrets/a", Status: 200, Outcome: "allowed"}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	st := l.Stats()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if st.Lines != writers*each {
		t.Fatalf("stats count %d durable lines, want %d", st.Lines, writers*each)
	}
	perSync := float64(st.Lines) / float64(st.Syncs)
	t.Logf("%d lines in %d fsyncs: %.1f lines/fsync, %v per fsync", st.Lines, st.Syncs, perSync, st.SyncTime/time.Duration(st.Syncs))
	if perSync < 4 {
		t.Errorf("%.1f lines per fsync with %d concurrent writers: group commit is not batching", perSync, writers)
	}
	res, err := verifyFile(t, path)
	if err != nil || res.Lines != writers*each {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

// countingFile counts the log's fsyncs and can fail its writes.
type countingFile struct {
	file
	mu     sync.Mutex
	syncs  int
	writes int
	fail   error
}

func (c *countingFile) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return 0, c.fail
	}
	c.writes++
	return c.file.Write(b)
}

func (c *countingFile) Sync() error {
	c.mu.Lock()
	c.syncs++
	c.mu.Unlock()
	return c.file.Sync()
}

func openCounting(t *testing.T, mode Sync) (*Logger, *countingFile, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := OpenWith(path, Options{Sync: mode})
	if err != nil {
		t.Fatal(err)
	}
	cf := &countingFile{file: l.f}
	l.w = cf
	t.Cleanup(func() { l.Close() })
	return l, cf, path
}

func TestSyncWriteWritesEachLineWithoutFsync(t *testing.T) {
	l, cf, path := openCounting(t, SyncWrite)
	for range 20 {
		if err := l.Log(context.Background(), Entry{Verb: "GET", Path: "/secrets/a", Status: 200, Outcome: "allowed"}); err != nil {
			t.Fatal(err)
		}
		// Written before Log returned: the file already holds the line.
		res, err := verifyFile(t, path)
		if err != nil {
			t.Fatal(err)
		}
		if res.Lines != cf.writes {
			t.Fatalf("after Log returned the file holds %d lines, %d written", res.Lines, cf.writes)
		}
	}
	if cf.syncs != 0 || cf.writes != 20 {
		t.Fatalf("write mode: %d fsyncs, %d writes; want 0 and 20", cf.syncs, cf.writes)
	}
	if st := l.Stats(); st.Lines != 20 || st.Syncs != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSyncFsyncFsyncsBeforeReturning(t *testing.T) {
	l, cf, _ := openCounting(t, SyncFsync)
	for i := range 5 {
		if err := l.Log(context.Background(), Entry{Verb: "GET", Path: "/secrets/a", Status: 200, Outcome: "allowed"}); err != nil {
			t.Fatal(err)
		}
		cf.mu.Lock()
		syncs := cf.syncs
		cf.mu.Unlock()
		if syncs != i+1 { // one writer at a time: one fsync per line
			t.Fatalf("after %d lines, %d fsyncs", i+1, syncs)
		}
	}
}

func TestFailingWriterFailsTheRequestInBothModes(t *testing.T) {
	for _, mode := range []Sync{SyncFsync, SyncWrite} {
		t.Run(string(mode), func(t *testing.T) {
			l, cf, _ := openCounting(t, mode)
			if err := l.Log(context.Background(), Entry{Verb: "GET", Path: "/secrets/a", Status: 200, Outcome: "allowed"}); err != nil {
				t.Fatal(err)
			}
			cf.mu.Lock()
			cf.fail = errors.New("no space left on device")
			cf.mu.Unlock()
			for range 2 { // the failing line, then every later one (sticky)
				err := l.Log(context.Background(), Entry{Verb: "GET", Path: "/secrets/a", Status: 200, Outcome: "allowed"})
				if err == nil || !strings.Contains(err.Error(), "refusing further access") || !strings.Contains(err.Error(), "no space left") {
					t.Fatalf("Log with a failing file: %v", err)
				}
			}
		})
	}
}

func TestParseSync(t *testing.T) {
	for in, want := range map[string]Sync{"": SyncFsync, "fsync": SyncFsync, "write": SyncWrite} {
		if got, err := ParseSync(in); err != nil || got != want {
			t.Errorf("ParseSync(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"none", "FSYNC", "async"} {
		if _, err := ParseSync(bad); err == nil || !strings.Contains(err.Error(), "want fsync") {
			t.Errorf("ParseSync(%q): %v", bad, err)
		}
		if _, err := OpenWith(filepath.Join(t.TempDir(), "a.log"), Options{Sync: Sync(bad)}); err == nil {
			t.Errorf("OpenWith sync %q: no error", bad)
		}
	}
}

// appendEntry writes the bytes json.Marshal writes, so lines and their
// hashes are what they were before it replaced json.Marshal.
func TestAppendEntryMatchesJSON(t *testing.T) {
	uid, pid, neg := 1000, 4242, -1
	for _, e := range []Entry{
		{},
		{Time: time.Date(2026, 1, 2, 3, 4, 5, 600, time.UTC), Seq: 7, Credential: "runner-1", PeerUID: &uid, PeerPID: &pid, Verb: "GET", Op: "get",
			Path: "/secrets/a/b", Status: 200, Outcome: "allowed", Prev: genesis},
		{Time: time.Date(1, 1, 1, 0, 0, 0, 0, time.FixedZone("x", 3600)), PeerUID: &neg, Verb: "PUT", Path: "/secrets/<&>\"\\\n\t\u2028é\xff", Status: 503,
			Outcome: "error", Reason: "audit log unavailable: \x00 ünïcode", Prev: "p"},
	} {
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendEntry(nil, &e); string(got) != string(want) {
			t.Errorf("appendEntry\n got %s\nwant %s", got, want)
		}
	}
}

func FuzzAppendEntry(f *testing.F) {
	f.Add("runner-1", "GET", "/secrets/a", "allowed", "", int64(0), 200, 1000)
	f.Add("<&>", "P\x00T", "/secrets/\u2028\xff", "error", "r\"e\\a", int64(1<<40), -1, -5)
	f.Fuzz(func(t *testing.T, cred, verb, path, outcome, reason string, ns int64, status, uid int) {
		e := Entry{Time: time.Unix(0, ns).UTC(), Seq: uint64(ns), Credential: cred, PeerUID: &uid, Verb: verb, Path: path, Status: status,
			Outcome: outcome, Reason: reason, Prev: genesis}
		// Every field's range is one json.Marshal encodes (times from int64
		// nanoseconds stay within years 1677-2262), so an error is a bug.
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatal("json.Marshal refuses the entry:", err)
		}
		if got := appendEntry(nil, &e); string(got) != string(want) {
			t.Fatalf("appendEntry\n got %s\nwant %s", got, want)
		}
	})
}
