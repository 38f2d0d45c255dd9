// Package vault is a storage driver on HashiCorp Vault's KV version 2 engine,
// through github.com/hashicorp/vault/api's typed KVv2 helper.
//
// Each key is one KV secret at <mount>/data/<prefix>/<key> holding
// {"value": "<base64 of the bytes>"}; the revision is the KV version. Delete
// removes the metadata, i.e. every version. Vault has no watch API in its
// community edition, so Watch polls (see Options.PollInterval).
package vault

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/vault/api"

	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/vaultauth"
)

// Options configure a Driver.
type Options struct {
	// Mount is the KV v2 mount path (default "secret").
	Mount string
	// Prefix is prepended to every key as a path (e.g. "sealrun").
	Prefix string
	// PollInterval is how often Watch lists and reads metadata (default 1s).
	// Each poll costs one LIST per directory plus one metadata read per key,
	// and changes within one interval coalesce (a put then delete of the same
	// key may go unseen), so keep watched prefixes small.
	PollInterval time.Duration
}

// Driver is a driver.Driver over Vault KV v2. It does not own the client.
type Driver struct {
	client *api.Client
	kv     *api.KVv2
	opts   Options
}

var _ driver.Driver = (*Driver)(nil)

// New returns a driver using client (address and token already set).
func New(client *api.Client, opts Options) *Driver {
	if opts.Mount == "" {
		opts.Mount = "secret"
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = time.Second
	}
	opts.Mount, opts.Prefix = strings.Trim(opts.Mount, "/"), strings.Trim(opts.Prefix, "/")
	return &Driver{client: client, kv: client.KVv2(opts.Mount), opts: opts}
}

func (d *Driver) path(key string) string { return path.Join(d.opts.Prefix, key) }

// Get implements driver.Driver; it reads the newest version.
func (d *Driver) Get(ctx context.Context, key string) (driver.Entry, error) {
	if err := driver.ValidateKey(key); err != nil {
		return driver.Entry{}, err
	}
	s, err := d.kv.Get(ctx, d.path(key))
	if err != nil {
		return driver.Entry{}, d.wrap("get", key, err)
	}
	text, ok := s.Data["value"].(string)
	if !ok {
		return driver.Entry{}, fmt.Errorf("vault get %q: secret has no string \"value\" field (not written by sealrun?): %w", key, driver.ErrIntegrity)
	}
	value, err := base64.StdEncoding.DecodeString(text)
	if err != nil {
		return driver.Entry{}, fmt.Errorf("vault get %q: value is not base64: %w", key, driver.ErrIntegrity)
	}
	return driver.Entry{Key: key, Value: value, Revision: int64(s.VersionMetadata.Version)}, nil
}

// Put implements driver.Driver with KV v2 check-and-set: cas=0 creates only,
// cas=N writes only over version N.
func (d *Driver) Put(ctx context.Context, key string, value []byte, opts driver.PutOptions) (int64, error) {
	if err := driver.ValidateKey(key); err != nil {
		return 0, err
	}
	var kvOpts []api.KVOption
	switch {
	case opts.IfAbsent && opts.IfRevision != 0:
		return 0, fmt.Errorf("vault put %q: IfAbsent and IfRevision together can never hold: %w", key, driver.ErrConflict)
	case opts.IfAbsent:
		kvOpts = append(kvOpts, api.WithCheckAndSet(0))
	case opts.IfRevision != 0:
		kvOpts = append(kvOpts, api.WithCheckAndSet(int(opts.IfRevision)))
	}
	s, err := d.kv.Put(ctx, d.path(key), map[string]any{"value": base64.StdEncoding.EncodeToString(value)}, kvOpts...)
	if err != nil {
		return 0, d.wrap("put", key, err)
	}
	return int64(s.VersionMetadata.Version), nil
}

// Delete implements driver.Driver by deleting the metadata (all versions).
// With IfRevision the check and the delete are two requests: Vault has no
// conditional delete, so a write between them can be lost.
func (d *Driver) Delete(ctx context.Context, key string, opts driver.DeleteOptions) error {
	if err := driver.ValidateKey(key); err != nil {
		return err
	}
	md, err := d.kv.GetMetadata(ctx, d.path(key))
	if err != nil {
		return d.wrap("delete", key, err)
	}
	if opts.IfRevision != 0 && int64(md.CurrentVersion) != opts.IfRevision {
		return fmt.Errorf("vault delete %q: version is %d, want %d: %w", key, md.CurrentVersion, opts.IfRevision, driver.ErrConflict)
	}
	if err := d.kv.DeleteMetadata(ctx, d.path(key)); err != nil {
		return d.wrap("delete", key, err)
	}
	return nil
}

// List implements driver.Driver by LISTing metadata directories recursively.
func (d *Driver) List(ctx context.Context, prefix string) ([]string, error) {
	dir, err := driver.DirPrefix(prefix)
	if err != nil {
		return nil, err
	}
	keys, err := d.list(ctx, strings.TrimSuffix(dir, "/"))
	if err != nil {
		return nil, d.wrap("list", prefix, err)
	}
	sort.Strings(keys)
	return keys, nil
}

func (d *Driver) list(ctx context.Context, dir string) ([]string, error) {
	s, err := d.client.Logical().ListWithContext(ctx, path.Join(d.opts.Mount, "metadata", d.opts.Prefix, dir))
	if err != nil {
		return nil, err
	}
	if s == nil {
		return []string{}, nil // Vault answers 404 for an empty directory
	}
	names, _ := s.Data["keys"].([]any)
	keys := make([]string, 0, len(names))
	for _, n := range names {
		name, _ := n.(string)
		child := path.Join(dir, name)
		if !strings.HasSuffix(name, "/") {
			keys = append(keys, child)
			continue
		}
		sub, err := d.list(ctx, child)
		if err != nil {
			return nil, err
		}
		keys = append(keys, sub...)
	}
	return keys, nil
}

// version identifies one write of a key. The version number alone is not
// enough: a key deleted and re-created between two polls starts again at
// version 1, so the metadata's update time is compared as well.
type version struct {
	n       int64
	updated time.Time
}

// snapshot maps each key below dir to its current version.
func (d *Driver) snapshot(ctx context.Context, dir string) (map[string]version, error) {
	keys, err := d.List(ctx, dir)
	if err != nil {
		return nil, err
	}
	snap := make(map[string]version, len(keys))
	for _, k := range keys {
		md, err := d.kv.GetMetadata(ctx, d.path(k))
		if errors.Is(err, api.ErrSecretNotFound) {
			continue // deleted between LIST and read
		} else if err != nil {
			return nil, d.wrap("watch", k, err)
		}
		snap[k] = version{n: int64(md.CurrentVersion), updated: md.UpdatedTime}
	}
	return snap, nil
}

// Watch implements driver.Driver by polling: every PollInterval it compares
// a snapshot of versions with the last and reports, sorted by key, puts for
// new or changed keys and deletes for vanished ones. The first snapshot is
// taken before Watch returns, so later changes are not missed (but may
// coalesce within an interval). Delete events carry revision 0.
func (d *Driver) Watch(ctx context.Context, prefix string) (<-chan driver.Event, error) {
	if _, err := driver.DirPrefix(prefix); err != nil {
		return nil, err
	}
	last, err := d.snapshot(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make(chan driver.Event, 16)
	go func() {
		defer close(out)
		tick := time.NewTicker(d.opts.PollInterval)
		defer tick.Stop()
		send := func(e driver.Event) bool {
			select {
			case out <- e:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			cur, err := d.snapshot(ctx, prefix)
			if err != nil {
				if ctx.Err() == nil {
					send(driver.Event{Err: err})
				}
				return
			}
			var events []driver.Event
			for k, v := range cur {
				if old, ok := last[k]; !ok || old.n != v.n || !old.updated.Equal(v.updated) {
					events = append(events, driver.Event{Type: driver.EventPut, Key: k, Revision: v.n})
				}
			}
			for k := range last {
				if _, ok := cur[k]; !ok {
					events = append(events, driver.Event{Type: driver.EventDelete, Key: k})
				}
			}
			sort.Slice(events, func(i, j int) bool { return events[i].Key < events[j].Key })
			for _, e := range events {
				if !send(e) {
					return
				}
			}
			last = cur
		}
	}()
	return out, nil
}

// wrap adds the operation and, for an unreachable Vault, where we looked.
// A 403 says which capability on which path is missing and a 503 whether
// Vault is sealed (vaultauth.Explain); both still unwrap to the API error.
func (d *Driver) wrap(op, key string, err error) error {
	err = vaultauth.Explain(err)
	var ue *vaultauth.UnavailableError
	var pe *vaultauth.PermissionError
	if errors.As(err, &ue) || errors.As(err, &pe) {
		return fmt.Errorf("vault %s %q: %w", op, key, err)
	}
	if d.ErrorCode(err) == driver.Unavailable {
		return fmt.Errorf("vault %s %q: no answer from %s (is Vault running, reachable and unsealed?): %w", op, key, d.client.Address(), err)
	}
	return fmt.Errorf("vault %s %q: %w", op, key, err)
}

// ErrorCode implements driver.Driver.
func (d *Driver) ErrorCode(err error) driver.Code {
	if errors.Is(err, api.ErrSecretNotFound) {
		return driver.NotFound
	}
	if c := driver.CommonCode(err); c != driver.Unknown {
		return c
	}
	var re *api.ResponseError
	if errors.As(err, &re) {
		switch {
		case re.StatusCode == http.StatusNotFound:
			return driver.NotFound
		case re.StatusCode == http.StatusForbidden:
			return driver.PermissionDenied
		case re.StatusCode == http.StatusBadRequest && strings.Contains(strings.Join(re.Errors, " "), "check-and-set"):
			return driver.Conflict
		case re.StatusCode == http.StatusBadRequest:
			return driver.InvalidValue
		case re.StatusCode >= 500:
			return driver.Unavailable // includes a sealed Vault (503)
		}
		return driver.Unknown
	}
	var ne interface{ Timeout() bool } // *url.Error, net.Error: no HTTP answer at all
	if errors.As(err, &ne) {
		return driver.Unavailable
	}
	return driver.Unknown
}

// Close implements driver.Driver; the client needs no closing.
func (d *Driver) Close() error { return nil }
