// Package audit writes the secrets proxy's access log: one JSON line per
// access, never a secret value, written (and with SyncFsync, fsync'd) before
// the response is sent, each line carrying the SHA-256 of the previous line
// so that an edited, inserted or removed line breaks the chain (Verify finds
// it). Both modes fail closed: a line that cannot be written fails its
// request and every later one.
//
// With SyncFsync concurrent writers share fsyncs (group commit): each Log
// call returns once the batch holding its line is on disk, so durability
// costs one fsync per batch, not per request. One goroutine does all writing and fsyncing and
// starts the next fsync the moment one ends: handing that job to a waiting
// writer instead would put a goroutine wake-up (on a busy host, a wait for a
// CPU) between every two fsyncs, with the disk idle meanwhile.
package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Entry is one access. Reason says why a request was refused; it must never
// hold a value.
type Entry struct {
	Time       time.Time `json:"time"`
	Seq        uint64    `json:"seq"`
	Credential string    `json:"cred,omitempty"`
	PeerUID    *int      `json:"uid,omitempty"`
	PeerPID    *int      `json:"pid,omitempty"`
	Verb       string    `json:"verb"`         // the HTTP method
	Op         string    `json:"op,omitempty"` // what it was authorized as: get, list, watch, put, create, delete
	Path       string    `json:"path"`
	Status     int       `json:"status"`
	Outcome    string    `json:"outcome"` // allowed, denied, error
	Reason     string    `json:"reason,omitempty"`
	Prev       string    `json:"prev"` // hex SHA-256 of the previous line
}

// genesis is the Prev of the first line of a log.
var genesis = hex.EncodeToString(make([]byte, sha256.Size))

// Sync says how far a line must get before Log returns.
type Sync string

const (
	// SyncFsync: the line is fsync'd (group commit) before Log returns; it
	// survives a power loss. The default.
	SyncFsync Sync = "fsync"
	// SyncWrite: the line is written to the file (the kernel's page cache)
	// before Log returns, not fsync'd — what Vault's file audit device
	// guarantees. It survives the proxy crashing, not the host losing
	// power; the disk's flush latency no longer bounds the request rate.
	SyncWrite Sync = "write"
)

// ParseSync parses a config value: "fsync", "write", or "" (fsync).
func ParseSync(s string) (Sync, error) {
	switch Sync(s) {
	case "", SyncFsync:
		return SyncFsync, nil
	case SyncWrite:
		return SyncWrite, nil
	}
	return "", fmt.Errorf("audit.sync %q: want fsync (each line on disk before the answer) or write (written, not fsync'd, before the answer)", s)
}

// Options configure a Logger.
type Options struct {
	Sync Sync // "" is SyncFsync
}

// file is what the log writes to: the *os.File, or in tests one that fails
// or counts fsyncs.
type file interface {
	Write([]byte) (int, error)
	Sync() error
}

// Logger appends entries to a file.
type Logger struct {
	mu      sync.Mutex
	f       *os.File
	w       file // f, unless a test replaced it
	sync    Sync
	buf     []byte // encoded lines of the filling batch
	spare   []byte // the buffer being (or last) written, reused for the next batch
	filling *batch // the batch new lines join; nil until a line arrives
	seq     uint64 // last assigned
	prev    string
	err     error // sticky write error: the log is broken, refuse service
	closed  bool
	now     func() time.Time
	stats   Stats
	work    *sync.Cond    // wakes the flusher: lines queued, or closing
	done    chan struct{} // closed when the flusher has drained and exited
}

// batch is the lines that share one fsync. Its writers wait on done alone,
// so the end of an fsync wakes only the requests it made durable, and none
// of them needs the logger's lock to learn it.
type batch struct {
	lines uint64
	done  chan struct{}
	err   error // set before done is closed
}

// Stats count what the log has recorded. Lines/Syncs is the group
// commit's batch size: with N concurrent requests it approaches N/2 (one
// batch is on its way to disk while the next fills), not 1. With SyncWrite
// Syncs stays 0.
type Stats struct {
	Lines    uint64        // lines written (and with SyncFsync, fsync'd)
	Syncs    uint64        // fsyncs
	SyncTime time.Duration // total time spent writing and fsyncing
}

// Stats returns the counts so far.
func (l *Logger) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stats
}

// Open opens (creating with mode 0600) the log at path and continues its
// chain from the last line, fsyncing every line. Close it to stop its
// flusher.
func Open(path string) (*Logger, error) { return OpenWith(path, Options{}) }

// OpenWith is Open with options.
func OpenWith(path string, o Options) (*Logger, error) {
	mode, err := ParseSync(string(o.Sync))
	if err != nil {
		return nil, err
	}
	_, statErr := os.Lstat(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	if errors.Is(statErr, os.ErrNotExist) {
		// A new log's name must survive a crash as its lines do.
		if err := syncDir(filepath.Dir(path)); err != nil {
			f.Close()
			return nil, fmt.Errorf("open audit log: %w", err)
		}
	}
	l := &Logger{f: f, w: f, sync: mode, prev: genesis, now: time.Now}
	last, err := lastLine(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit log %s: %w", path, err)
	}
	if last != nil {
		var e Entry
		if err := json.Unmarshal(last, &e); err != nil {
			f.Close()
			return nil, fmt.Errorf("audit log %s: last line is not an entry (run sealrun audit verify): %w", path, err)
		}
		l.seq, l.prev = e.Seq, lineHash(last)
	}
	l.work = sync.NewCond(&l.mu)
	l.done = make(chan struct{})
	go l.flusher()
	return l, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// lastLine returns the last complete line of f without reading it all.
func lastLine(f *os.File) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return nil, err
	}
	size := fi.Size()
	for chunk := int64(4096); ; chunk *= 2 {
		off := max(size-chunk, 0)
		b := make([]byte, size-off)
		if _, err := f.ReadAt(b, off); err != nil && err != io.EOF {
			return nil, err
		}
		if b[len(b)-1] != '\n' {
			return nil, errors.New("log does not end with a newline (torn write?); run sealrun audit verify")
		}
		b = b[:len(b)-1]
		if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
			return b[i+1:], nil
		}
		if off == 0 {
			return b, nil
		}
	}
}

func lineHash(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}

// Log appends e (Seq, Prev and, if zero, Time are filled in) and returns once
// it is on disk (SyncFsync) or in the file (SyncWrite). An error means the
// entry may not be recorded; the caller must not serve the request.
func (l *Logger) Log(ctx context.Context, e Entry) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return errors.New("audit log closed")
	}
	if l.err != nil {
		err := l.err
		l.mu.Unlock()
		return err
	}
	if e.Time.IsZero() {
		e.Time = l.now().UTC()
	}
	if y := e.Time.Year(); y < 0 || y > 9999 {
		l.mu.Unlock()
		return fmt.Errorf("audit entry time %v: year outside 0–9999", e.Time)
	}
	e.Seq, e.Prev = l.seq+1, l.prev
	if l.sync == SyncWrite {
		// One write under the lock keeps lines in chain order and costs a
		// syscall, not the two goroutine hand-offs of the flusher.
		defer l.mu.Unlock()
		start := time.Now()
		l.buf = appendEntry(l.buf[:0], &e)
		l.seq++
		l.prev = lineHash(l.buf)
		l.buf = append(l.buf, '\n')
		if _, err := l.w.Write(l.buf); err != nil {
			l.err = fmt.Errorf("audit log write failed, refusing further access: %w", err)
			return l.err
		}
		l.stats.Lines++
		l.stats.SyncTime += time.Since(start)
		return ctx.Err()
	}
	n := len(l.buf)
	l.buf = appendEntry(l.buf, &e)
	l.seq++
	l.prev = lineHash(l.buf[n:])
	l.buf = append(l.buf, '\n')
	if l.filling == nil {
		l.filling = &batch{done: make(chan struct{})}
		l.work.Signal()
	}
	b := l.filling
	b.lines++
	l.mu.Unlock()
	<-b.done
	if b.err != nil {
		return b.err
	}
	return ctx.Err()
}

// flusher writes and fsyncs the filling batch, batch after batch, until
// the log is closed and drained. It starts the next fsync the moment one
// ends: the lines that arrived meanwhile are the next batch.
func (l *Logger) flusher() {
	defer close(l.done)
	l.mu.Lock()
	for {
		for l.filling == nil && !l.closed {
			l.work.Wait()
		}
		b := l.filling
		if b == nil {
			l.mu.Unlock()
			return // closed, and every line is on disk
		}
		buf, err := l.buf, l.err
		l.buf, l.spare, l.filling = l.spare[:0], nil, nil
		l.mu.Unlock()

		start := time.Now()
		if err == nil {
			if _, err = l.w.Write(buf); err == nil {
				err = l.w.Sync()
			}
			if err != nil {
				err = fmt.Errorf("audit log write failed, refusing further access: %w", err)
			}
		}
		took := time.Since(start)

		l.mu.Lock()
		l.spare = buf
		if err != nil {
			// The log is broken: nothing more reaches it, and this batch's
			// writers and every later one get the error.
			l.err = err
		} else {
			l.stats.Lines += b.lines
			l.stats.Syncs++
			l.stats.SyncTime += took
		}
		b.err = err
		close(b.done)
	}
}

// Close writes what is queued, stops the flusher and closes the file.
func (l *Logger) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		<-l.done
		return nil
	}
	l.closed = true
	l.work.Signal()
	l.mu.Unlock()
	<-l.done
	return l.f.Close()
}

// VerifyResult summarizes a verified log.
type VerifyResult struct {
	Lines    int
	LastSeq  uint64
	LastHash string // anchor it elsewhere to detect truncation of the tail
}

// Verify checks the chain of a whole log read from r: every line parses, seq
// increases by one from 1, and each Prev is the hash of the line before. It
// reports the first broken line.
func Verify(r io.Reader) (VerifyResult, error) { return verify(r, nil) }

// ReadVerified returns the entries of a whole log read from r, after
// checking its chain as Verify does.
func ReadVerified(r io.Reader) ([]Entry, error) {
	var out []Entry
	_, err := verify(r, func(e Entry) { out = append(out, e) })
	return out, err
}

func verify(r io.Reader, visit func(Entry)) (VerifyResult, error) {
	var res VerifyResult
	prev := genesis
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		res.Lines++
		var e Entry
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return res, fmt.Errorf("line %d: not an audit entry: %v", res.Lines, err)
		}
		if e.Seq != res.LastSeq+1 {
			return res, fmt.Errorf("line %d: sequence %d follows %d: lines were removed or reordered", res.Lines, e.Seq, res.LastSeq)
		}
		if e.Prev != prev {
			return res, fmt.Errorf("line %d (seq %d): previous-line hash does not match: the line before it was edited, inserted or removed", res.Lines, e.Seq)
		}
		prev = lineHash(line)
		res.LastSeq, res.LastHash = e.Seq, prev
		if visit != nil {
			visit(e)
		}
	}
	if err := sc.Err(); err != nil {
		return res, fmt.Errorf("line %d: %v", res.Lines+1, err)
	}
	return res, nil
}
