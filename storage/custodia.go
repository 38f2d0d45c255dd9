package storage

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/driver"
)

// With Options.Custodia, raw values and containers live in Custodia's own
// records (package custodia). Before that they were JSON models in the
// secret driver (raw/<name> holding {"name":...,"value":"<base64>"},
// custodia-container/<path>); that older form is read where the new one is
// absent, never written again, and replaced by the first write of the name
// (sealrun rotate --custodia rewrites them all).

func (s *Service) inCustodia(kind string) bool {
	return s.custodia != nil && (kind == secrets.KindRaw || kind == secrets.KindContainer)
}

// cdo runs one call on the Custodia namespace with a default timeout,
// metrics and error wrapping.
func (s *Service) cdo(ctx context.Context, op, kind, key string, fn func(context.Context) error) error {
	if op != "list" || key != "" {
		if err := driver.ValidateKey(key); err != nil {
			s.ops.WithLabelValues(op, "custodia", driver.InvalidKey.String()).Inc()
			return &Error{Op: op, Kind: kind, Key: key, Code: driver.InvalidKey, Err: err}
		}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	start := time.Now()
	err := fn(ctx)
	code := s.custodia.ErrorCode(err)
	s.latency.WithLabelValues(op, "custodia").Observe(time.Since(start).Seconds())
	s.ops.WithLabelValues(op, "custodia", code.String()).Inc()
	if err != nil {
		return &Error{Op: op, Kind: kind, Key: key, Code: code, Err: err}
	}
	return nil
}

// legacyRevision returns the revision of kind/key in the older form, 0 if
// there is none.
func (s *Service) legacyRevision(ctx context.Context, kind, key string) (int64, error) {
	var rev int64
	err := s.do(ctx, "get", kind, key, func(ctx context.Context, d driver.Driver, k string) error {
		e, err := d.Get(ctx, k)
		rev = e.Revision
		return err
	})
	if Code(err) == driver.NotFound {
		return 0, nil
	}
	return rev, err
}

func (s *Service) custodiaPut(ctx context.Context, m secrets.Model, opts driver.PutOptions) (int64, error) {
	kind, key := m.Kind(), m.Key()
	old, err := s.legacyRevision(ctx, kind, key)
	if err != nil {
		return 0, err
	}
	if opts.IfAbsent && old != 0 {
		return 0, &Error{Op: "put", Kind: kind, Key: key, Code: driver.Conflict, Err: fmt.Errorf("exists (in the older form): %w", driver.ErrConflict)}
	}
	write := func(ctx context.Context, o driver.PutOptions) (rev int64, err error) {
		err = s.cdo(ctx, "put", kind, key, func(ctx context.Context) error {
			switch m := m.(type) {
			case *secrets.Raw:
				rev, err = s.custodia.PutValue(ctx, key, m.Value, o)
			default:
				rev, err = s.custodia.Span(ctx, key)
				if !o.IfAbsent && s.custodia.ErrorCode(err) == driver.Conflict {
					rev, err = s.custodia.GetContainer(ctx, key) // already there: done
				}
			}
			return err
		})
		return rev, err
	}
	rev, err := write(ctx, opts)
	if opts.IfRevision != 0 && old != 0 && Code(err) == driver.NotFound {
		// The revision read was the older form's: replace it, once.
		if old != opts.IfRevision {
			return 0, &Error{Op: "put", Kind: kind, Key: key, Code: driver.Conflict, Err: driver.ErrConflict}
		}
		rev, err = write(ctx, driver.PutOptions{IfAbsent: true})
	}
	if err != nil || old == 0 {
		return rev, err
	}
	// One copy only: the older form goes once the new record is written.
	derr := s.do(ctx, "delete", kind, key, func(ctx context.Context, d driver.Driver, k string) error {
		return d.Delete(ctx, k, driver.DeleteOptions{IfRevision: old})
	})
	if derr != nil && Code(derr) != driver.NotFound {
		return rev, fmt.Errorf("written; removing the older form failed: %w", derr)
	}
	return rev, nil
}

func (s *Service) custodiaGet(ctx context.Context, m secrets.Model) (int64, error) {
	kind, key := m.Kind(), m.Key()
	var rev int64
	err := s.cdo(ctx, "get", kind, key, func(ctx context.Context) error {
		switch m := m.(type) {
		case *secrets.Raw:
			e, err := s.custodia.GetValue(ctx, key)
			if err != nil {
				return err
			}
			m.Value, rev = secrets.Secret(e.Value), e.Revision
			return nil
		default:
			var err error
			rev, err = s.custodia.GetContainer(ctx, key)
			return err
		}
	})
	if Code(err) != driver.NotFound {
		return rev, err
	}
	// The older form: a JSON model in the secret driver.
	lerr := s.do(ctx, "get", kind, key, func(ctx context.Context, d driver.Driver, k string) error {
		e, err := d.Get(ctx, k)
		if err != nil {
			return err
		}
		rev = e.Revision
		return decode(m, e.Value)
	})
	if Code(lerr) == driver.NotFound {
		return 0, err
	}
	return rev, lerr
}

func (s *Service) custodiaDelete(ctx context.Context, kind, key string, opts driver.DeleteOptions) error {
	err := s.cdo(ctx, "delete", kind, key, func(ctx context.Context) error {
		if kind == secrets.KindRaw {
			return s.custodia.DeleteValue(ctx, key, opts)
		}
		return s.custodia.Cut(ctx, key, opts)
	})
	if Code(err) != driver.NotFound {
		return err
	}
	lerr := s.do(ctx, "delete", kind, key, func(ctx context.Context, d driver.Driver, k string) error {
		return d.Delete(ctx, k, opts)
	})
	if Code(lerr) == driver.NotFound {
		return err
	}
	return lerr
}

func (s *Service) custodiaList(ctx context.Context, kind, prefix string) ([]string, error) {
	var keys []string
	err := s.cdo(ctx, "list", kind, prefix, func(ctx context.Context) error {
		values, containers, err := s.custodia.List(ctx, prefix)
		if kind == secrets.KindRaw {
			keys = values
		} else {
			keys = containers
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	err = s.do(ctx, "list", kind, prefix, func(ctx context.Context, d driver.Driver, k string) error {
		full, err := d.List(ctx, k)
		for _, f := range full {
			keys = append(keys, f[len(kind)+1:])
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Strings(keys)
	out := keys[:0]
	for i, k := range keys {
		if i == 0 || k != keys[i-1] {
			out = append(out, k)
		}
	}
	return out, nil
}

// custodiaWatch merges the namespace's events with the older form's. An
// event on a name in the namespace is delivered for both kinds, since the
// store does not say which a record is: watchers re-read.
func (s *Service) custodiaWatch(ctx context.Context, kind, prefix string) (<-chan driver.Event, error) {
	ctx, cancel := context.WithCancel(ctx)
	var ns <-chan driver.Event
	err := s.cdo(driver.WithSetupTimeout(ctx, s.timeout), "watch", kind, prefix, func(wctx context.Context) (err error) {
		ns, err = s.custodia.Watch(driver.WithSetupTimeout(ctx, s.timeout), strings.TrimSuffix(prefix, "/"))
		return err
	})
	if err != nil {
		cancel()
		return nil, err
	}
	legacy, err := s.watch(ctx, kind, prefix)
	if err != nil {
		cancel()
		return nil, err
	}
	out := make(chan driver.Event)
	go func() {
		defer cancel()
		defer close(out)
		for ns != nil || legacy != nil {
			var e driver.Event
			var ok bool
			select {
			case e, ok = <-ns:
				if !ok {
					ns = nil
					continue
				}
			case e, ok = <-legacy:
				if !ok {
					legacy = nil
					continue
				}
			}
			select {
			case out <- e:
			case <-ctx.Done():
				return
			}
			if e.Err != nil {
				return // one side failed: the stream ends, as a driver's would
			}
		}
	}()
	return out, nil
}
