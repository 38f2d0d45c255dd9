// Package storage is sealrun's portable storage service. A Service knows,
// from a model's registered type alone, whether it holds a secret, and routes
// it to the secret driver (an encrypting backend) or the state driver. It owns
// what every backend shares: routing, JSON encoding, key validation, metrics
// and portable error codes.
package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/custodia"
	"github.com/sealrun/sealrun/storage/driver"
)

// Error is every error a Service returns: the operation, the model's kind and
// key (never its contents), a portable code and the driver's error.
type Error struct {
	Op, Kind, Key string
	Code          driver.Code
	Err           error
}

func (e *Error) Error() string {
	return fmt.Sprintf("storage %s %s %q: %v", e.Op, e.Kind, e.Key, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Code returns the portable code of err (Unknown if it did not come from a
// Service, OK for nil).
func Code(err error) driver.Code {
	if err == nil {
		return driver.OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return driver.CommonCode(err)
}

// Options configure a Service.
type Options struct {
	// Registry lists the storable models; nil means secrets.Default().
	Registry *secrets.Registry
	// Metrics, if set, receives the service's collectors.
	Metrics prometheus.Registerer
	// Timeout bounds each call whose context has no deadline, so an
	// unreachable backend fails instead of hanging (default 10s).
	Timeout time.Duration
	// Logger gets what the backends log on their own (the embedded etcd's
	// warnings and errors); nil discards it.
	Logger *slog.Logger
	// Closers are closed after both drivers, in order (e.g. an etcd client,
	// then the embedded server).
	Closers []io.Closer
	// Custodia, if set, holds raw values and containers (the Custodia API's
	// namespace) in Custodia's own records instead of as JSON models in the
	// secret driver; values in that older form still read (see custodia.go).
	Custodia *custodia.Namespace
}

// Service stores models. It is safe for concurrent use.
type Service struct {
	secret, state driver.Driver
	custodia      *custodia.Namespace
	reg           *secrets.Registry
	timeout       time.Duration
	closers       []io.Closer
	ops           *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	closeOnce     sync.Once
	closeErr      error
}

// New returns a Service routing secret models to secret and plain ones to
// state. The two must not share a namespace. Close closes both.
func New(secret, state driver.Driver, opts Options) (*Service, error) {
	if secret == nil || state == nil {
		return nil, errors.New("storage: both a secret and a state driver are required")
	}
	s := &Service{secret: secret, state: state, custodia: opts.Custodia, reg: opts.Registry, timeout: opts.Timeout, closers: opts.Closers}
	if s.reg == nil {
		s.reg = secrets.Default()
	}
	if s.timeout == 0 {
		s.timeout = 10 * time.Second
	}
	s.ops = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "sealrun_storage_operations_total",
		Help: "Storage operations by operation, backend (secret or state) and result code.",
	}, []string{"op", "backend", "code"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sealrun_storage_operation_duration_seconds",
		Help:    "Storage operation latency by operation and backend.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	}, []string{"op", "backend"})
	if opts.Metrics != nil {
		for _, c := range []prometheus.Collector{s.ops, s.latency} {
			if err := opts.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("storage: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Registry returns the model registry the service routes by.
func (s *Service) Registry() *secrets.Registry { return s.reg }

// route picks the driver for kind; unregistered kinds are an error.
func (s *Service) route(kind string) (driver.Driver, string, error) {
	secret, err := s.reg.IsSecretKind(kind)
	if err != nil {
		return nil, "", err
	}
	if secret {
		return s.secret, "secret", nil
	}
	return s.state, "state", nil
}

// do runs one driver call with routing, key checks, a default timeout,
// metrics and error wrapping.
func (s *Service) do(ctx context.Context, op, kind, key string, fn func(context.Context, driver.Driver, string) error) error {
	d, backend, err := s.route(kind)
	if err != nil {
		return &Error{Op: op, Kind: kind, Key: key, Code: driver.InvalidKey, Err: err}
	}
	full := path.Join(kind, key) // kind is a registered name, key is validated below
	if key == "" && op == "list" {
		full = kind
	} else if err := driver.ValidateKey(key); err != nil {
		s.ops.WithLabelValues(op, backend, driver.InvalidKey.String()).Inc()
		return &Error{Op: op, Kind: kind, Key: key, Code: driver.InvalidKey, Err: err}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	start := time.Now()
	err = fn(ctx, d, full)
	code := d.ErrorCode(err)
	s.latency.WithLabelValues(op, backend).Observe(time.Since(start).Seconds())
	s.ops.WithLabelValues(op, backend, code.String()).Inc()
	if err != nil {
		return &Error{Op: op, Kind: kind, Key: key, Code: code, Err: err}
	}
	return nil
}

func (s *Service) check(m secrets.Model) error {
	if err := s.reg.Check(m); err != nil {
		return &Error{Op: "check", Kind: fmt.Sprintf("%T", m), Code: driver.InvalidKey, Err: err}
	}
	return nil
}

// Put stores m under its kind and key and returns the new revision.
func (s *Service) Put(ctx context.Context, m secrets.Model, opts driver.PutOptions) (int64, error) {
	if err := s.check(m); err != nil {
		return 0, err
	}
	if s.inCustodia(m.Kind()) {
		return s.custodiaPut(ctx, m, opts)
	}
	// The storage codec: JSON, where secrets.Secret encodes its bytes.
	data, err := json.Marshal(m)
	if err != nil {
		return 0, &Error{Op: "put", Kind: m.Kind(), Key: m.Key(), Code: driver.InvalidValue, Err: fmt.Errorf("encode: %w", err)}
	}
	var rev int64
	err = s.do(ctx, "put", m.Kind(), m.Key(), func(ctx context.Context, d driver.Driver, k string) (err error) {
		rev, err = d.Put(ctx, k, data, opts)
		return err
	})
	return rev, err
}

// ErrBatchUnsupported is wrapped by PutBatch and GetBatch when the backend
// cannot batch atomically (Vault). Check it with errors.Is and fall back to
// Put and Get: a sequence of puts is not atomic, so the Service does not
// pretend it is.
var ErrBatchUnsupported = driver.ErrBatchUnsupported

// BatchItem is one conditional write of a PutBatch.
type BatchItem struct {
	Model secrets.Model
	Opts  driver.PutOptions
}

// batchRoute checks that every model is valid and that all route to one
// backend, and returns that driver and the full driver keys.
func (s *Service) batchRoute(op string, ms []secrets.Model) (driver.Driver, string, []string, error) {
	var d driver.Driver
	var backend string
	keys := make([]string, len(ms))
	for i, m := range ms {
		if err := s.check(m); err != nil {
			return nil, "", nil, err
		}
		if s.inCustodia(m.Kind()) {
			// Custodia's records may still be in their older form, read
			// one by one: callers fall back to Put and Get.
			return nil, "", nil, &Error{Op: op, Kind: m.Kind(), Key: m.Key(), Code: driver.Unknown,
				Err: fmt.Errorf("custodia namespace: %w", ErrBatchUnsupported)}
		}
		md, b, err := s.route(m.Kind())
		if err != nil {
			return nil, "", nil, &Error{Op: op, Kind: m.Kind(), Key: m.Key(), Code: driver.InvalidKey, Err: err}
		}
		if d == nil {
			d, backend = md, b
		} else if b != backend {
			return nil, "", nil, &Error{Op: op, Kind: m.Kind(), Key: m.Key(), Code: driver.InvalidKey,
				Err: fmt.Errorf("a batch must stay in one backend: this item goes to the %s store, the first to the %s store", b, backend)}
		}
		if err := driver.ValidateKey(m.Key()); err != nil {
			s.ops.WithLabelValues(op, b, driver.InvalidKey.String()).Inc()
			return nil, "", nil, &Error{Op: op, Kind: m.Kind(), Key: m.Key(), Code: driver.InvalidKey, Err: err}
		}
		keys[i] = path.Join(m.Kind(), m.Key())
	}
	return d, backend, keys, nil
}

// batchDo runs one batch driver call with the default timeout, metrics and
// error wrapping; the error names the batch by its first item.
func (s *Service) batchDo(ctx context.Context, op string, d driver.Driver, backend string, first secrets.Model, fn func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	start := time.Now()
	err := fn(ctx)
	code := d.ErrorCode(err)
	s.latency.WithLabelValues(op, backend).Observe(time.Since(start).Seconds())
	s.ops.WithLabelValues(op, backend, code.String()).Inc()
	if err != nil {
		return &Error{Op: op, Kind: first.Kind(), Key: first.Key(), Code: code, Err: err}
	}
	return nil
}

// PutBatch stores every item or none, in one round trip, and returns the
// new revisions in order. All items must route to the same backend. If any
// condition fails, nothing is written and the code is Conflict (which item
// failed is not known: retry item by item to find out). A backend that
// cannot batch returns an error wrapping ErrBatchUnsupported. At most
// driver.MaxBatch items.
func (s *Service) PutBatch(ctx context.Context, items []BatchItem) ([]int64, error) {
	if len(items) == 0 {
		return nil, nil
	}
	ms := make([]secrets.Model, len(items))
	for i, it := range items {
		ms[i] = it.Model
	}
	d, backend, keys, err := s.batchRoute("put_batch", ms)
	if err != nil {
		return nil, err
	}
	puts := make([]driver.BatchPut, len(items))
	for i, it := range items {
		data, err := json.Marshal(it.Model)
		if err != nil {
			return nil, &Error{Op: "put_batch", Kind: it.Model.Kind(), Key: it.Model.Key(), Code: driver.InvalidValue, Err: fmt.Errorf("encode: %w", err)}
		}
		puts[i] = driver.BatchPut{Key: keys[i], Value: data, Opts: it.Opts}
	}
	b, ok := d.(driver.Batcher)
	if !ok {
		return nil, &Error{Op: "put_batch", Kind: ms[0].Kind(), Key: ms[0].Key(), Code: driver.Unknown,
			Err: fmt.Errorf("%s store: %w", backend, ErrBatchUnsupported)}
	}
	var revs []int64
	err = s.batchDo(ctx, "put_batch", d, backend, ms[0], func(ctx context.Context) (err error) {
		revs, err = b.PutBatch(ctx, puts)
		return err
	})
	return revs, err
}

// GetBatch fills each model (pointers with their keys set) from one
// consistent read and returns their revisions in order. A missing model is
// not an error: its revision is 0 and it is left as it was. All models must
// route to the same backend; at most driver.MaxBatch of them. A backend that
// cannot batch returns an error wrapping ErrBatchUnsupported.
func (s *Service) GetBatch(ctx context.Context, ms []secrets.Model) ([]int64, error) {
	if len(ms) == 0 {
		return nil, nil
	}
	d, backend, keys, err := s.batchRoute("get_batch", ms)
	if err != nil {
		return nil, err
	}
	bg, ok := d.(driver.BatchGetter)
	if !ok {
		return nil, &Error{Op: "get_batch", Kind: ms[0].Kind(), Key: ms[0].Key(), Code: driver.Unknown,
			Err: fmt.Errorf("%s store: %w", backend, ErrBatchUnsupported)}
	}
	revs := make([]int64, len(ms))
	err = s.batchDo(ctx, "get_batch", d, backend, ms[0], func(ctx context.Context) error {
		entries, err := bg.GetBatch(ctx, keys)
		if err != nil {
			return err
		}
		for i, e := range entries {
			if e.Revision == 0 {
				continue
			}
			kind, key := ms[i].Kind(), ms[i].Key()
			if err := decode(ms[i], e.Value); err != nil {
				return fmt.Errorf("%s/%s: %w", kind, key, err)
			}
			revs[i] = e.Revision
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return revs, nil
}

// Get fills m (a pointer with its key set, e.g. from Registry().New) from
// storage and returns its revision.
func (s *Service) Get(ctx context.Context, m secrets.Model) (int64, error) {
	if err := s.check(m); err != nil {
		return 0, err
	}
	if s.inCustodia(m.Kind()) {
		return s.custodiaGet(ctx, m)
	}
	key := m.Key()
	var rev int64
	err := s.do(ctx, "get", m.Kind(), key, func(ctx context.Context, d driver.Driver, k string) error {
		e, err := d.Get(ctx, k)
		if err != nil {
			return err
		}
		rev = e.Revision
		return decode(m, e.Value)
	})
	return rev, err
}

// decode fills m, whose key is set, from its stored value, which must
// carry the same key.
func decode(m secrets.Model, value []byte) error {
	key := m.Key()
	if err := json.Unmarshal(value, m); err != nil {
		// json errors name types and offsets, not values.
		return fmt.Errorf("decode stored value: %w: %w", err, driver.ErrIntegrity)
	}
	if m.Key() != key {
		return fmt.Errorf("stored value claims key %q: %w", m.Key(), driver.ErrIntegrity)
	}
	return nil
}

// Delete removes the model of kind with key.
func (s *Service) Delete(ctx context.Context, kind, key string, opts driver.DeleteOptions) error {
	if s.inCustodia(kind) {
		return s.custodiaDelete(ctx, kind, key, opts)
	}
	return s.do(ctx, "delete", kind, key, func(ctx context.Context, d driver.Driver, k string) error {
		return d.Delete(ctx, k, opts)
	})
}

// List returns the keys of kind below the directory prefix ("" for all),
// sorted.
func (s *Service) List(ctx context.Context, kind, prefix string) ([]string, error) {
	if s.inCustodia(kind) {
		return s.custodiaList(ctx, kind, prefix)
	}
	var keys []string
	err := s.do(ctx, "list", kind, prefix, func(ctx context.Context, d driver.Driver, k string) error {
		full, err := d.List(ctx, k)
		if err != nil {
			return err
		}
		for _, f := range full {
			keys = append(keys, f[len(kind)+1:])
		}
		return nil
	})
	return keys, err
}

// Watch delivers changes to models of kind below prefix (see driver.Watch).
// Event keys are model keys, without the kind. A driver whose start can
// wait forever bounds it by Options.Timeout (driver.SetupContext); the
// stream is bounded only by ctx.
func (s *Service) Watch(ctx context.Context, kind, prefix string) (<-chan driver.Event, error) {
	if s.inCustodia(kind) {
		return s.custodiaWatch(ctx, kind, prefix)
	}
	return s.watch(ctx, kind, prefix)
}

func (s *Service) watch(ctx context.Context, kind, prefix string) (<-chan driver.Event, error) {
	d, _, err := s.route(kind)
	if err != nil {
		return nil, &Error{Op: "watch", Kind: kind, Key: prefix, Code: driver.InvalidKey, Err: err}
	}
	in, err := d.Watch(driver.WithSetupTimeout(ctx, s.timeout), path.Join(kind, prefix))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			err = fmt.Errorf("the backend did not start the watch within %v (is it reachable?): %w", s.timeout, err)
		}
		return nil, &Error{Op: "watch", Kind: kind, Key: prefix, Code: d.ErrorCode(err), Err: err}
	}
	out := make(chan driver.Event)
	go func() {
		defer close(out)
		for e := range in {
			if e.Key != "" {
				e.Key = e.Key[len(kind)+1:]
			}
			select {
			case out <- e:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// Close closes both drivers and then Options.Closers.
func (s *Service) Close() error {
	s.closeOnce.Do(func() {
		errs := []error{s.secret.Close(), s.state.Close()}
		if s.custodia != nil {
			errs = append(errs, s.custodia.Close())
		}
		for _, c := range s.closers {
			errs = append(errs, c.Close())
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}
