// Package etcd is a storage driver on etcd's v3 API. Every key lives under a
// prefix applied by etcd's namespace decorators, so nothing here builds key
// strings by concatenation and two drivers with disjoint prefixes cannot see
// each other's keys.
package etcd

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sealrun/sealrun/storage/driver"
)

// Driver is a driver.Driver over an etcd client. It does not own the client.
type Driver struct {
	client  *clientv3.Client
	kv      clientv3.KV
	watcher clientv3.Watcher
}

var (
	_ driver.Driver      = (*Driver)(nil)
	_ driver.Batcher     = (*Driver)(nil)
	_ driver.BatchGetter = (*Driver)(nil)
)

// New returns a driver storing keys under prefix (e.g. "/sealrun/state/") on
// client. The prefix should end in '/' so it cannot match a sibling.
func New(client *clientv3.Client, prefix string) *Driver {
	return &Driver{client: client, kv: namespace.NewKV(client.KV, prefix), watcher: namespace.NewWatcher(client.Watcher, prefix)}
}

// Get implements driver.Driver.
func (d *Driver) Get(ctx context.Context, key string) (driver.Entry, error) {
	if err := driver.ValidateKey(key); err != nil {
		return driver.Entry{}, err
	}
	resp, err := d.kv.Get(ctx, key)
	if err != nil {
		return driver.Entry{}, d.wrap("get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return driver.Entry{}, fmt.Errorf("etcd get %q: %w", key, driver.ErrNotFound)
	}
	kv := resp.Kvs[0]
	return driver.Entry{Key: key, Value: kv.Value, Revision: kv.ModRevision}, nil
}

// Put implements driver.Driver. Conditions are one etcd transaction on the
// key's CreateRevision (absent = 0) or ModRevision.
func (d *Driver) Put(ctx context.Context, key string, value []byte, opts driver.PutOptions) (int64, error) {
	if err := driver.ValidateKey(key); err != nil {
		return 0, err
	}
	resp, err := d.kv.Txn(ctx).If(conds(nil, key, opts)...).Then(clientv3.OpPut(key, string(value))).Commit()
	if err != nil {
		return 0, d.wrap("put", key, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("etcd put %q: %w", key, driver.ErrConflict)
	}
	return resp.Header.Revision, nil
}

// conds appends a put's conditions on key to cmps: absent is a
// CreateRevision of 0, a revision is the ModRevision.
func conds(cmps []clientv3.Cmp, key string, opts driver.PutOptions) []clientv3.Cmp {
	if opts.IfAbsent {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
	}
	if opts.IfRevision != 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(key), "=", opts.IfRevision))
	}
	return cmps
}

// PutBatch implements driver.Batcher: one transaction whose If holds every
// put's conditions and whose Then holds every put, so etcd applies all or
// none at a single revision. Batches are limited to driver.MaxBatch so the
// transaction stays within etcd's default --max-txn-ops.
func (d *Driver) PutBatch(ctx context.Context, puts []driver.BatchPut) ([]int64, error) {
	if err := driver.CheckBatch(driver.BatchKeys(puts)); err != nil {
		return nil, err
	}
	if len(puts) == 0 {
		return nil, nil
	}
	var cmps []clientv3.Cmp
	ops := make([]clientv3.Op, len(puts))
	for i, p := range puts {
		cmps = conds(cmps, p.Key, p.Opts)
		ops[i] = clientv3.OpPut(p.Key, string(p.Value))
	}
	first := puts[0].Key
	resp, err := d.kv.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return nil, d.wrap(fmt.Sprintf("put batch of %d from", len(puts)), first, err)
	}
	if !resp.Succeeded {
		return nil, fmt.Errorf("etcd put batch of %d from %q: a condition failed, nothing written: %w", len(puts), first, driver.ErrConflict)
	}
	// Every put of one transaction gets the transaction's revision.
	revs := make([]int64, len(puts))
	for i := range revs {
		revs[i] = resp.Header.Revision
	}
	return revs, nil
}

// GetBatch implements driver.BatchGetter: one read-only transaction, so
// every entry comes from the same revision.
func (d *Driver) GetBatch(ctx context.Context, keys []string) ([]driver.Entry, error) {
	if err := driver.CheckBatch(keys); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, nil
	}
	ops := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		ops[i] = clientv3.OpGet(k)
	}
	resp, err := d.kv.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, d.wrap(fmt.Sprintf("get batch of %d from", len(keys)), keys[0], err)
	}
	out := make([]driver.Entry, len(keys))
	for i, r := range resp.Responses {
		out[i] = driver.Entry{Key: keys[i]}
		if kvs := r.GetResponseRange().Kvs; len(kvs) > 0 {
			out[i].Value, out[i].Revision = kvs[0].Value, kvs[0].ModRevision
		}
	}
	return out, nil
}

// Delete implements driver.Driver.
func (d *Driver) Delete(ctx context.Context, key string, opts driver.DeleteOptions) error {
	if err := driver.ValidateKey(key); err != nil {
		return err
	}
	conds := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), ">", 0)}
	if opts.IfRevision != 0 {
		conds = append(conds, clientv3.Compare(clientv3.ModRevision(key), "=", opts.IfRevision))
	}
	resp, err := d.kv.Txn(ctx).If(conds...).Then(clientv3.OpDelete(key)).Else(clientv3.OpGet(key, clientv3.WithCountOnly())).Commit()
	if err != nil {
		return d.wrap("delete", key, err)
	}
	if !resp.Succeeded {
		if resp.Responses[0].GetResponseRange().Count == 0 {
			return fmt.Errorf("etcd delete %q: %w", key, driver.ErrNotFound)
		}
		return fmt.Errorf("etcd delete %q: %w", key, driver.ErrConflict)
	}
	return nil
}

// List implements driver.Driver.
func (d *Driver) List(ctx context.Context, prefix string) ([]string, error) {
	dir, err := driver.DirPrefix(prefix)
	if err != nil {
		return nil, err
	}
	opts := []clientv3.OpOption{clientv3.WithKeysOnly(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
	if dir == "" {
		// The whole namespace: namespace.NewKV maps "\x00" + WithFromKey to it.
		dir, opts = "\x00", append(opts, clientv3.WithFromKey())
	} else {
		opts = append(opts, clientv3.WithPrefix())
	}
	resp, err := d.kv.Get(ctx, dir, opts...)
	if err != nil {
		return nil, d.wrap("list", prefix, err)
	}
	keys := make([]string, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		keys[i] = string(kv.Key)
	}
	return keys, nil
}

// Watch implements driver.Driver. It starts at the revision after the
// current one, so no change made after Watch returns is missed.
func (d *Driver) Watch(ctx context.Context, prefix string) (<-chan driver.Event, error) {
	dir, err := driver.DirPrefix(prefix)
	if err != nil {
		return nil, err
	}
	key, opts := dir, []clientv3.OpOption{clientv3.WithPrefix()}
	if dir == "" {
		key, opts = "\x00", []clientv3.OpOption{clientv3.WithFromKey()}
	}
	// etcd's client waits for an unreachable cluster: the first read is
	// bounded (driver.SetupContext), the stream is not.
	sctx, scancel := driver.SetupContext(ctx)
	head, err := d.kv.Get(sctx, key, append(opts, clientv3.WithCountOnly())...)
	scancel()
	if err != nil {
		return nil, d.wrap("watch", prefix, err)
	}
	// Derive a context so the etcd watch stream ends when our consumer stops.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := d.watcher.Watch(wctx, key, append(opts, clientv3.WithRev(head.Header.Revision+1))...)
	out := make(chan driver.Event, 16)
	go func() {
		defer close(out)
		defer cancel()
		for resp := range wch {
			if err := resp.Err(); err != nil {
				if ctx.Err() == nil {
					select {
					case out <- driver.Event{Err: fmt.Errorf("etcd watch %q: %w", prefix, err)}:
					case <-ctx.Done():
					}
				}
				return
			}
			for _, ev := range resp.Events {
				e := driver.Event{Type: driver.EventPut, Key: string(ev.Kv.Key), Revision: ev.Kv.ModRevision}
				if ev.Type == mvccpb.DELETE {
					e.Type = driver.EventDelete
				}
				select {
				case out <- e:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// wrap adds the operation and, when etcd cannot be reached, where we looked.
func (d *Driver) wrap(op, key string, err error) error {
	if errors.Is(err, rpctypes.ErrNoSpace) {
		return fmt.Errorf("etcd %s %q: etcd's database is full (NOSPACE alarm, quota-backend-bytes reached): "+
			"compact and defragment etcd, then disarm the alarm (etcdctl alarm disarm): %w", op, key, err)
	}
	if tooLarge(err) {
		return fmt.Errorf("etcd %s %q: %w: etcd refused the request for its size (etcd's --max-request-bytes, 1.5 MiB by default, "+
			"or the client's 8 MiB send limit; the overlay stores a value base64-encoded, about 1.8 times its size): %v", op, key, driver.ErrTooLarge, err)
	}
	if d.ErrorCode(err) == driver.Unavailable {
		return fmt.Errorf("etcd %s %q: no answer from %v (is etcd running and reachable? check endpoints and TLS): %w",
			op, key, d.client.Endpoints(), err)
	}
	return fmt.Errorf("etcd %s %q: %w", op, key, err)
}

// ErrorCode implements driver.Driver.
func (d *Driver) ErrorCode(err error) driver.Code {
	if c := driver.CommonCode(err); c != driver.Unknown {
		return c
	}
	if tooLarge(err) { // not Unavailable: retrying cannot help
		return driver.InvalidValue
	}
	return grpcCode(err)
}

// tooLarge says etcd refused a request for its size: the server's
// --max-request-bytes, or the gRPC client's send limit (ResourceExhausted).
func tooLarge(err error) bool {
	if errors.Is(err, rpctypes.ErrRequestTooLarge) {
		return true
	}
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return false
	}
	st := se.GRPCStatus()
	// "trying to send": the client refused our request; "received": etcd's
	// gRPC server did (the client's own receive limit is unbounded, so an
	// answer never gets here).
	return st.Code() == codes.ResourceExhausted && strings.Contains(st.Message(), "larger than max") ||
		st.Code() == codes.InvalidArgument && strings.Contains(st.Message(), "request is too large")
}

// grpcCode classifies errors from the etcd client, which are gRPC statuses.
func grpcCode(err error) driver.Code {
	if errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrAuthFailed) {
		return driver.PermissionDenied
	}
	// The client returns server errors as rpctypes.EtcdError (no
	// GRPCStatus method: "no leader", "request timed out", "database space
	// exceeded"), transport errors as gRPC statuses.
	code, ok := codes.OK, false
	var se interface{ GRPCStatus() *status.Status }
	var ee rpctypes.EtcdError
	if errors.As(err, &se) {
		code, ok = se.GRPCStatus().Code(), true
	} else if errors.As(err, &ee) {
		code, ok = ee.Code(), true
	}
	if ok {
		switch code {
		case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
			return driver.Unavailable
		case codes.Canceled:
			return driver.Canceled
		case codes.PermissionDenied, codes.Unauthenticated:
			return driver.PermissionDenied
		case codes.InvalidArgument:
			return driver.InvalidValue
		}
	}
	return driver.Unknown
}

// Close implements driver.Driver; the client stays open (its owner closes it).
func (d *Driver) Close() error { return nil }
