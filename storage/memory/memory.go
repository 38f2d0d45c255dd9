// Package memory is an in-process storage driver for unit tests and
// single-process experiments. Nothing survives the process.
package memory

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/sealrun/sealrun/storage/driver"
)

// Driver is an in-memory driver.Driver. The zero value is not usable; call New.
type Driver struct {
	mu      sync.Mutex
	data    map[string]driver.Entry
	rev     int64          // global revision, like etcd's
	log     []driver.Event // every change, for watchers; grows for the driver's life
	changed chan struct{}  // closed and replaced on every change
	closed  chan struct{}
}

// New returns an empty driver.
func New() *Driver {
	return &Driver{data: map[string]driver.Entry{}, changed: make(chan struct{}), closed: make(chan struct{})}
}

var (
	_ driver.Driver      = (*Driver)(nil)
	_ driver.Batcher     = (*Driver)(nil)
	_ driver.BatchGetter = (*Driver)(nil)
)

func (d *Driver) check(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-d.closed:
		return driver.ErrClosed
	default:
	}
	return driver.ValidateKey(key)
}

// Get implements driver.Driver.
func (d *Driver) Get(ctx context.Context, key string) (driver.Entry, error) {
	if err := d.check(ctx, key); err != nil {
		return driver.Entry{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.data[key]
	if !ok {
		return driver.Entry{}, fmt.Errorf("get %q: %w", key, driver.ErrNotFound)
	}
	e.Value = append([]byte(nil), e.Value...)
	return e, nil
}

// Put implements driver.Driver.
func (d *Driver) Put(ctx context.Context, key string, value []byte, opts driver.PutOptions) (int64, error) {
	if err := d.check(ctx, key); err != nil {
		return 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.precond(key, opts); err != nil {
		return 0, err
	}
	d.rev++
	d.data[key] = driver.Entry{Key: key, Value: append([]byte(nil), value...), Revision: d.rev}
	d.notify(driver.Event{Type: driver.EventPut, Key: key, Revision: d.rev})
	return d.rev, nil
}

// precond checks a put's conditions on key; d.mu is held.
func (d *Driver) precond(key string, opts driver.PutOptions) error {
	cur, exists := d.data[key]
	if opts.IfAbsent && exists {
		return fmt.Errorf("create %q: already exists: %w", key, driver.ErrConflict)
	}
	if opts.IfRevision != 0 && cur.Revision != opts.IfRevision {
		return fmt.Errorf("put %q: revision is %d, want %d: %w", key, cur.Revision, opts.IfRevision, driver.ErrConflict)
	}
	return nil
}

// PutBatch implements driver.Batcher. Like etcd, the whole batch is one
// revision.
func (d *Driver) PutBatch(ctx context.Context, puts []driver.BatchPut) ([]int64, error) {
	if err := d.check(ctx, "batch"); err != nil {
		return nil, err
	}
	if err := driver.CheckBatch(driver.BatchKeys(puts)); err != nil {
		return nil, err
	}
	if len(puts) == 0 {
		return nil, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range puts {
		if err := d.precond(p.Key, p.Opts); err != nil {
			return nil, fmt.Errorf("put batch, nothing written: %w", err)
		}
	}
	d.rev++
	revs := make([]int64, len(puts))
	for i, p := range puts {
		d.data[p.Key] = driver.Entry{Key: p.Key, Value: append([]byte(nil), p.Value...), Revision: d.rev}
		d.notify(driver.Event{Type: driver.EventPut, Key: p.Key, Revision: d.rev})
		revs[i] = d.rev
	}
	return revs, nil
}

// GetBatch implements driver.BatchGetter.
func (d *Driver) GetBatch(ctx context.Context, keys []string) ([]driver.Entry, error) {
	if err := d.check(ctx, "batch"); err != nil {
		return nil, err
	}
	if err := driver.CheckBatch(keys); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]driver.Entry, len(keys))
	for i, k := range keys {
		e, ok := d.data[k]
		if !ok {
			out[i] = driver.Entry{Key: k}
			continue
		}
		e.Value = append([]byte(nil), e.Value...)
		out[i] = e
	}
	return out, nil
}

// Delete implements driver.Driver.
func (d *Driver) Delete(ctx context.Context, key string, opts driver.DeleteOptions) error {
	if err := d.check(ctx, key); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	cur, exists := d.data[key]
	if !exists {
		return fmt.Errorf("delete %q: %w", key, driver.ErrNotFound)
	}
	if opts.IfRevision != 0 && cur.Revision != opts.IfRevision {
		return fmt.Errorf("delete %q: revision is %d, want %d: %w", key, cur.Revision, opts.IfRevision, driver.ErrConflict)
	}
	delete(d.data, key)
	d.rev++
	d.notify(driver.Event{Type: driver.EventDelete, Key: key, Revision: d.rev})
	return nil
}

// notify appends to the log and wakes watchers; d.mu must be held.
func (d *Driver) notify(e driver.Event) {
	d.log = append(d.log, e)
	close(d.changed)
	d.changed = make(chan struct{})
}

// List implements driver.Driver.
func (d *Driver) List(ctx context.Context, prefix string) ([]string, error) {
	dir, err := driver.DirPrefix(prefix)
	if err != nil {
		return nil, err
	}
	if err := d.check(ctx, "list"); err != nil {
		return nil, err
	}
	d.mu.Lock()
	keys := make([]string, 0)
	for k := range d.data {
		if strings.HasPrefix(k, dir) {
			keys = append(keys, k)
		}
	}
	d.mu.Unlock()
	sort.Strings(keys)
	return keys, nil
}

// Watch implements driver.Driver. Its goroutine ends with ctx or Close.
func (d *Driver) Watch(ctx context.Context, prefix string) (<-chan driver.Event, error) {
	dir, err := driver.DirPrefix(prefix)
	if err != nil {
		return nil, err
	}
	if err := d.check(ctx, "watch"); err != nil {
		return nil, err
	}
	d.mu.Lock()
	next := len(d.log)
	d.mu.Unlock()
	ch := make(chan driver.Event, 16)
	go func() {
		defer close(ch)
		for {
			d.mu.Lock()
			events, wake := d.log[next:], d.changed
			next = len(d.log)
			d.mu.Unlock()
			for _, e := range events {
				if !strings.HasPrefix(e.Key, dir) {
					continue
				}
				select {
				case ch <- e:
				case <-ctx.Done():
					return
				case <-d.closed:
					return
				}
			}
			select {
			case <-wake:
			case <-ctx.Done():
				return
			case <-d.closed:
				return
			}
		}
	}()
	return ch, nil
}

// ErrorCode implements driver.Driver.
func (d *Driver) ErrorCode(err error) driver.Code { return driver.CommonCode(err) }

// Close implements driver.Driver; it ends every watch.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-d.closed:
	default:
		close(d.closed)
	}
	return nil
}
