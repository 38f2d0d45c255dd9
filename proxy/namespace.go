package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"hash/fnv"
	"net/http"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/sealrun/sealrun/internal/watchcache"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// The API namespace maps onto models:
//
//	/secrets/<name>                  a Custodia value: secrets.Raw{Name: name}
//	/secrets/<c>/                    a Custodia container: Container{Path: c}
//	/secrets/sealrun/<kind>/<key>    a typed model; the value is its JSON
//
// "sealrun" is therefore a reserved top-level name.

// target is a resolved name.
type target struct {
	typed bool
	kind  string // typed only
	key   string
}

func resolve(name string) (target, error) {
	rest, ok := strings.CutPrefix(name, typedPrefix)
	if !ok || (rest != "" && rest[0] != '/') {
		return target{key: name}, nil
	}
	rest = strings.TrimPrefix(rest, "/")
	kind, key, _ := strings.Cut(rest, "/")
	if kind != "" && !exposedKinds[kind] {
		if kind == secrets.KindAPICredential {
			return target{}, fail(http.StatusForbidden, "API credentials are not readable through the API")
		}
		return target{}, fail(http.StatusNotFound, "no model kind %q under /secrets/%s/ (kinds: %s)", kind, typedPrefix, strings.Join(exposedKindList(), ", "))
	}
	return target{typed: true, kind: kind, key: key}, nil
}

func exposedKindList() []string {
	var ks []string
	for k := range exposedKinds {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func (s *Server) get(ctx context.Context, name string) (value, error) {
	t, err := resolve(name)
	if err != nil {
		return nil, err
	}
	kind, key := secrets.KindRaw, name
	if t.typed {
		if t.key == "" {
			return nil, fail(http.StatusNotFound, "not found")
		}
		kind, key = t.kind, t.key
	}
	var gen watchcache.Gen
	if s.values != nil {
		v, g, ok := s.values.get(kind, key)
		if ok {
			return v, nil
		}
		gen = g
	}
	v, err := s.load(ctx, kind, key)
	if err != nil {
		return nil, err
	}
	if s.values != nil {
		s.values.fill(kind, key, v, gen)
	}
	return v, nil
}

// load reads a value from the backend in its API form: a raw value as it
// is, a typed model as its JSON.
func (s *Server) load(ctx context.Context, kind, key string) (value, error) {
	if kind == secrets.KindRaw {
		m := &secrets.Raw{Name: key}
		if _, err := s.o.Store.Get(ctx, m); err != nil {
			return nil, err
		}
		return value(m.Value), nil
	}
	m, err := s.o.Store.Registry().New(kind, key)
	if err != nil {
		return nil, err
	}
	if _, err := s.o.Store.Get(ctx, m); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	return value(b), err
}

// written drops kind/key from the value cache once a write through this
// proxy has returned (whatever its outcome), before the client is answered:
// the proxy's own clients read their writes without waiting for the watch.
func (s *Server) written(kind, key string) {
	if s.values != nil {
		s.values.invalidate(kind, key)
	}
}

func (s *Server) put(ctx context.Context, name string, v value, ifMatch string) (int64, error) {
	t, err := resolve(name)
	if err != nil {
		return 0, err
	}
	var m secrets.Model
	if !t.typed {
		defer s.holdParent(name)()
		if err := s.requireParent(ctx, name); err != nil {
			return 0, err
		}
		m = &secrets.Raw{Name: name, Value: secrets.Secret(v)}
	} else {
		if t.key == "" {
			return 0, fail(http.StatusMethodNotAllowed, "PUT needs /secrets/%s/<kind>/<key>", typedPrefix)
		}
		if m, err = s.o.Store.Registry().New(t.kind, t.key); err != nil {
			return 0, err
		}
		dec := json.NewDecoder(strings.NewReader(string(v)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(m); err != nil {
			return 0, fail(http.StatusBadRequest, "value is not a JSON %s model: %s", t.kind, jsonErrorShape(err))
		}
		if m.Key() != t.key {
			return 0, fail(http.StatusBadRequest, "the value's key %q does not match the path's %q", m.Key(), t.key)
		}
	}
	opts := driver.PutOptions{IfAbsent: true}
	if ifMatch != "" {
		if opts, err = s.replaceOptions(ctx, m, ifMatch); err != nil {
			return 0, err
		}
	}
	rev, err := s.o.Store.Put(ctx, m, opts)
	s.written(m.Kind(), m.Key())
	if ifMatch != "" && storage.Code(err) == driver.Conflict {
		return 0, fail(http.StatusPreconditionFailed, "the value changed or was deleted since revision %d; read it and replace again", opts.IfRevision)
	}
	return rev, mutation(err)
}

// replaceOptions turns an If-Match header into a compare-and-set Put: "*"
// against the revision current now, or the revision it names (an ETag
// this proxy returned).
func (s *Server) replaceOptions(ctx context.Context, m secrets.Model, ifMatch string) (driver.PutOptions, error) {
	if ifMatch == "*" {
		cur, err := s.o.Store.Registry().New(m.Kind(), m.Key())
		if err != nil {
			return driver.PutOptions{}, err
		}
		rev, err := s.o.Store.Get(ctx, cur)
		if storage.Code(err) == driver.NotFound {
			return driver.PutOptions{}, fail(http.StatusPreconditionFailed, "nothing to replace: it does not exist; create it with a PUT without If-Match")
		}
		if err != nil {
			return driver.PutOptions{}, err
		}
		return driver.PutOptions{IfRevision: rev}, nil
	}
	rev, err := strconv.ParseInt(strings.Trim(strings.TrimPrefix(ifMatch, "W/"), `"`), 10, 64)
	if err != nil || rev <= 0 {
		return driver.PutOptions{}, fail(http.StatusBadRequest, `If-Match must be * or a revision this proxy returned as an ETag ("123")`)
	}
	return driver.PutOptions{IfRevision: rev}, nil
}

// jsonErrorShape describes a decode error without echoing input (which may
// be secret).
func jsonErrorShape(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return "invalid JSON"
	case errors.As(err, &te):
		return "field " + te.Field + " has the wrong type"
	case strings.HasPrefix(err.Error(), "json: unknown field"):
		return strings.TrimPrefix(err.Error(), "json: ")
	}
	return "invalid"
}

func (s *Server) delete(ctx context.Context, name string) error {
	t, err := resolve(name)
	if err != nil {
		return err
	}
	if t.typed {
		if t.key == "" {
			return fail(http.StatusMethodNotAllowed, "typed model kinds cannot be deleted")
		}
		err := s.o.Store.Delete(ctx, t.kind, t.key, driver.DeleteOptions{})
		s.written(t.kind, t.key)
		return mutation(err)
	}
	err = s.o.Store.Delete(ctx, secrets.KindRaw, name, driver.DeleteOptions{})
	s.written(secrets.KindRaw, name)
	return mutation(err)
}

// containerLocks make "the container is empty, delete it" atomic against
// "the container exists, put into it" in this process: a PUT holds its
// parent's lock shared from the check to the write, a container delete
// holds its own exclusively. Striped, so any number of paths costs a fixed
// amount of memory. Proxies sharing a backend do not share these locks.
const containerLockStripes = 64

func (s *Server) containerLock(name string) *sync.RWMutex {
	h := fnv.New32a()
	h.Write([]byte(name))
	return &s.containerLocks[h.Sum32()%containerLockStripes]
}

// holdParent holds name's container against deletion until the returned
// func is called.
func (s *Server) holdParent(name string) (release func()) {
	parent := path.Dir(name)
	if parent == "." {
		return func() {} // the root container is never deleted
	}
	l := s.containerLock(parent)
	l.RLock()
	return l.RUnlock
}

// requireParent returns 404 unless the container holding name exists.
func (s *Server) requireParent(ctx context.Context, name string) error {
	parent := path.Dir(name)
	if parent == "." {
		return nil // the root container always exists
	}
	if _, err := s.o.Store.Get(ctx, &Container{Path: parent}); err != nil {
		if storage.Code(err) == driver.NotFound {
			return fail(http.StatusNotFound, "container /secrets/%s/ does not exist; create it with POST first", parent)
		}
		return err
	}
	return nil
}

func (s *Server) createContainer(ctx context.Context, name string) (created bool, err error) {
	if name == "" {
		return false, nil
	}
	t, err := resolve(name)
	if err != nil {
		return false, err
	}
	if t.typed {
		if t.key != "" {
			return false, fail(http.StatusBadRequest, "typed models have no sub-containers")
		}
		return false, nil // implicit containers always exist
	}
	defer s.holdParent(name)()
	if err := s.requireParent(ctx, name); err != nil {
		return false, err
	}
	_, err = s.o.Store.Put(ctx, &Container{Path: name}, driver.PutOptions{IfAbsent: true})
	if storage.Code(err) == driver.Conflict {
		return false, nil
	}
	return err == nil, mutation(err)
}

func (s *Server) containerExists(ctx context.Context, name string) error {
	if name == "" {
		return nil
	}
	_, err := s.o.Store.Get(ctx, &Container{Path: name})
	if storage.Code(err) == driver.NotFound {
		return fail(http.StatusNotFound, "container /secrets/%s/ does not exist", name)
	}
	return err
}

// list returns the container's whole subtree, sorted: sub-containers as
// "name/", values as "name" or "sub/name" (Custodia's listing).
func (s *Server) list(ctx context.Context, name string) ([]string, error) {
	t, err := resolve(name)
	if err != nil {
		return nil, err
	}
	if t.typed {
		if t.kind == "" {
			out := []string{}
			for _, k := range exposedKindList() {
				out = append(out, k+"/")
			}
			return out, nil
		}
		keys, err := s.o.Store.List(ctx, t.kind, t.key)
		if err != nil {
			return nil, err
		}
		return relative(keys, t.key, ""), nil
	}
	if err := s.containerExists(ctx, name); err != nil {
		return nil, err
	}
	values, err := s.o.Store.List(ctx, secrets.KindRaw, name)
	if err != nil {
		return nil, err
	}
	containers, err := s.o.Store.List(ctx, KindContainer, name)
	if err != nil {
		return nil, err
	}
	out := append(relative(values, name, ""), relative(containers, name, "/")...)
	if name == "" {
		out = dropReserved(out)
	}
	return sortedUnique(out), nil
}

func relative(keys []string, base, suffix string) []string {
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		if base != "" {
			k = strings.TrimPrefix(k, base+"/")
		}
		out = append(out, k+suffix)
	}
	return out
}

func dropReserved(names []string) []string {
	out := names[:0]
	for _, n := range names {
		if n != typedPrefix+"/" && !strings.HasPrefix(n, typedPrefix+"/") {
			out = append(out, n)
		}
	}
	return out
}

func (s *Server) deleteContainer(ctx context.Context, name string) error {
	t, err := resolve(name)
	if err != nil {
		return err
	}
	if name == "" || t.typed {
		return fail(http.StatusMethodNotAllowed, "this container cannot be deleted")
	}
	l := s.containerLock(name)
	l.Lock()
	defer l.Unlock()
	if err := s.containerExists(ctx, name); err != nil {
		return err
	}
	for _, kind := range []string{secrets.KindRaw, KindContainer} {
		keys, err := s.o.Store.List(ctx, kind, name)
		if err != nil {
			return err
		}
		if len(keys) > 0 {
			return fail(http.StatusConflict, "container /secrets/%s/ is not empty", name)
		}
	}
	return mutation(s.o.Store.Delete(ctx, KindContainer, name, driver.DeleteOptions{}))
}
