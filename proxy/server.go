// Package proxy is sealrun's secrets proxy: a Custodia-compatible HTTP API
// on a unix socket (optionally TLS), with per-credential API keys and path
// authorization, limits and a hash-chained audit log, fronting a
// storage.Service. Nothing but the proxy holds the master key or the Vault
// token; everything else reaches secrets through it.
package proxy

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sealrun/sealrun/proxy/wire"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sealrun/sealrun/proxy/audit"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/driver"
)

// Options configure a Server.
type Options struct {
	Store       Store
	Credentials *Credentials
	Audit       *audit.Logger
	IDHeader    string // default wire.DefaultIDHeader
	KeyHeader   string // default wire.DefaultKeyHeader
	// AllowedUIDs, when set, also requires unix peers to run as one of
	// these uids (SO_PEERCRED), whatever their API key.
	AllowedUIDs []int
	MaxBody     int64   // bytes; default 1 MiB
	Rate        float64 // requests/s per credential; default 10000 (see configs/proxy.yaml)
	Burst       int     // default 20000
	// AuthFailRate bounds failed authentications per peer (uid or IP), so
	// a brute force is slowed and audited; default 2/s, burst 10.
	AuthFailRate  float64
	AuthFailBurst int
	Metrics       prometheus.Registerer
	Logger        *slog.Logger
	// ValueCache, when positive, caches up to this many decrypted values
	// for GET (see valueCache); 0 turns it off. It is correct only when
	// WatchValues runs and the backend's Watch reports every change (the
	// etcd overlay); until its watches are established it is not used.
	ValueCache int
	// ValueCacheBytes bounds the bytes of the cached values and names;
	// default DefaultCacheBytes.
	ValueCacheBytes int64
	// MaxWatchStreams bounds the watch streams one credential holds open
	// (each holds a backend watch); default 64.
	MaxWatchStreams int
	// StreamWriteTimeout bounds each write to a watch stream, so a client
	// that stops reading cannot hold its handler and backend watch forever;
	// default 30s.
	StreamWriteTimeout time.Duration
}

// Server serves the API. It is an http.Handler.
type Server struct {
	o        Options
	limits   *limiters // requests, by credential id
	failures *limiters // failed authentications, by failKey
	peerFail *limiters // failed authentications, by peer, all ids together
	reqs     *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	// streams ends watch streams when an http.Server from HTTPServer shuts
	// down: Shutdown does not cancel running handlers, so without it every
	// stop waited its whole timeout for the runners' watch streams.
	streams     context.Context
	stopStreams context.CancelFunc
	values      *valueCache // nil: off

	streamsMu   sync.Mutex
	openStreams map[string]int // credential id -> watch streams open

	containerLocks [containerLockStripes]sync.RWMutex
}

// NewServer checks opts and returns a Server.
func NewServer(o Options) (*Server, error) {
	if o.Store == nil || o.Credentials == nil || o.Audit == nil {
		return nil, errors.New("proxy: Store, Credentials and Audit are required")
	}
	if o.IDHeader == "" {
		o.IDHeader = wire.DefaultIDHeader
	}
	if o.KeyHeader == "" {
		o.KeyHeader = wire.DefaultKeyHeader
	}
	if o.MaxBody <= 0 {
		o.MaxBody = 1 << 20
	}
	if o.Rate <= 0 {
		o.Rate, o.Burst = DefaultRate, DefaultBurst
	}
	if o.Burst <= 0 {
		o.Burst = int(o.Rate) + 1
	}
	if o.MaxWatchStreams <= 0 {
		o.MaxWatchStreams = 64
	}
	if o.StreamWriteTimeout <= 0 {
		o.StreamWriteTimeout = 30 * time.Second
	}
	if o.AuthFailRate <= 0 {
		o.AuthFailRate, o.AuthFailBurst = 2, 10
	}
	if o.AuthFailBurst <= 0 {
		o.AuthFailBurst = 1
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Credentials.log = o.Logger // before WatchRevocations runs
	s := &Server{o: o,
		limits:   newLimiters(o.Rate, o.Burst, 0),
		failures: newLimiters(o.AuthFailRate, o.AuthFailBurst, maxFailLimiters),
		peerFail: newLimiters(10*o.AuthFailRate, 10*o.AuthFailBurst, 0),
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sealrun_proxy_requests_total",
			Help: "Secrets proxy requests by verb and HTTP status."}, []string{"verb", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "sealrun_proxy_request_seconds",
			Help: "Secrets proxy request latency, audit fsync included.", Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9)}, []string{"verb"}),
	}
	s.streams, s.stopStreams = context.WithCancel(context.Background())
	if o.ValueCache > 0 {
		if o.ValueCacheBytes <= 0 {
			o.ValueCacheBytes = DefaultCacheBytes
		}
		s.values = newValueCache(o.ValueCache, o.ValueCacheBytes)
	}
	// Group commit at work: lines over fsyncs is the batch size.
	auditLines := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sealrun_proxy_audit_lines_total",
		Help: "Audit lines written and fsync'd."}, func() float64 { return float64(o.Audit.Stats().Lines) })
	auditSyncs := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sealrun_proxy_audit_fsyncs_total",
		Help: "Audit log fsyncs (each covers a batch of lines)."}, func() float64 { return float64(o.Audit.Stats().Syncs) })
	// Every GET waits for an fsync, so this over fsyncs (the disk's flush
	// latency) bounds what the proxy serves at a given concurrency.
	auditSyncTime := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "sealrun_proxy_audit_fsync_seconds_total",
		Help: "Time spent writing and fsyncing the audit log."}, func() float64 { return o.Audit.Stats().SyncTime.Seconds() })
	collectors := []prometheus.Collector{s.reqs, s.latency, auditLines, auditSyncs, auditSyncTime}
	if s.values != nil {
		collectors = append(collectors,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sealrun_proxy_value_cache_entries",
				Help: "Decrypted values in the proxy's value cache."}, func() float64 { n, _ := s.values.size(); return float64(n) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "sealrun_proxy_value_cache_bytes",
				Help: "Bytes of the values and names in the proxy's value cache (bounded by cache.bytes)."}, func() float64 { _, b := s.values.size(); return float64(b) }))
	}
	if o.Metrics != nil {
		for _, c := range collectors {
			if err := o.Metrics.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// request is one API call being served.
type request struct {
	w      http.ResponseWriter
	r      *http.Request
	rec    audit.Entry
	verb   string
	start  time.Time
	logged bool
	// mayBeApplied: a backend write failed in a way that may still have
	// made it (so no wire.NotAppliedHeader, whatever else fails).
	mayBeApplied bool
}

type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func fail(status int, format string, a ...any) error {
	return &apiError{status: status, msg: fmt.Sprintf(format, a...)}
}

// mayBeApplied marks an error from a backend call that changes state: the
// change may have been made even though the call failed.
type mayBeApplied struct{ error }

func (e mayBeApplied) Unwrap() error { return e.error }

func mutation(err error) error {
	if err == nil {
		return nil
	}
	return mayBeApplied{err}
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := &request{w: w, r: r, start: time.Now(), verb: methodLabel(r.Method)}
	escaped := r.URL.EscapedPath()
	q.rec = audit.Entry{Verb: r.Method, Path: truncate(escaped, MaxPathLen)}
	if pc, ok := peerFrom(r.Context()); ok {
		q.rec.PeerUID, q.rec.PeerPID = &pc.UID, &pc.PID
	}
	err := s.serve(q, escaped)
	if err != nil {
		var ae *apiError
		if !errors.As(err, &ae) {
			ae = s.backendError(err)
		}
		q.mayBeApplied = errors.As(err, new(mayBeApplied))
		if (ae.status == http.StatusTooManyRequests || ae.status == http.StatusServiceUnavailable) && !q.mayBeApplied {
			w.Header().Set(wire.NotAppliedHeader, "1")
		}
		s.respond(q, ae.status, ae.msg, func() { writeJSON(w, ae.status, map[string]string{"error": ae.msg}) })
	}
}

func (s *Server) serve(q *request, escaped string) error {
	r := q.r
	root := r.URL.Path == "/"
	var name string
	var container bool
	var pathErr error
	if !root {
		name, container, pathErr = cleanSecretPath(escaped, r.URL.Path)
		if errors.Is(pathErr, errBadPath) {
			return fail(http.StatusBadRequest, "%v", pathErr)
		}
	}
	// Everything else is answered to authenticated clients only, as
	// Custodia does (GET / included).
	cred, err := s.authenticate(q)
	if err != nil {
		return err
	}
	q.rec.Credential = cred.ID
	if !s.limits.get(cred.ID).Allow() {
		q.w.Header().Set("Retry-After", "1")
		return fail(http.StatusTooManyRequests, "rate limit of %.0f requests/s for credential %s exceeded", s.o.Rate, cred.ID)
	}
	if root {
		return s.serveRoot(q)
	}
	if errors.Is(pathErr, errNotServed) {
		return fail(http.StatusForbidden, "%v", pathErr)
	}
	if pathErr != nil {
		return fail(http.StatusNotFound, "%v", pathErr)
	}
	verb, err := verbOf(r, container)
	if err != nil {
		return err
	}
	if !container && !strings.Contains(name, "/") {
		// Custodia: "Operation only permitted within a container".
		return fail(http.StatusForbidden, "/secrets/%s: values live in a container (/secrets/<container>/%s); create one with POST /secrets/<container>/", name, name)
	}
	q.verb, q.rec.Op = verb, verb
	authzPath := "/secrets/" + name
	if container && name != "" {
		authzPath += "/"
	}
	if !grantOf(cred).Allows(verb, authzPath) {
		return fail(http.StatusForbidden, "credential %s may not %s %s", cred.ID, verb, authzPath)
	}
	ctx := r.Context()
	switch verb {
	case "get":
		if err := checkQueryType(r); err != nil {
			return err
		}
		v, err := s.get(ctx, name)
		if err != nil {
			return err
		}
		return s.writeValue(q, v)
	case "put":
		// If-Match (not in Custodia's API; its clients never send it)
		// makes the PUT a replace in one compare-and-set write: "*" the
		// current value, "<revision>" only that revision. Replacing
		// destroys the old value, so it needs the delete grant too.
		ifMatch := r.Header.Get("If-Match")
		if ifMatch != "" && !grantOf(cred).Allows("delete", authzPath) {
			return fail(http.StatusForbidden, "credential %s may not replace %s (needs put and delete)", cred.ID, authzPath)
		}
		v, err := s.readValue(q)
		if err != nil {
			return err
		}
		rev, err := s.put(ctx, name, v, ifMatch)
		if err != nil {
			return err
		}
		return s.respond(q, http.StatusCreated, "", func() {
			q.w.Header().Set("ETag", strconv.Quote(strconv.FormatInt(rev, 10)))
			q.w.WriteHeader(http.StatusCreated)
		})
	case "delete":
		if container {
			err = s.deleteContainer(ctx, name)
		} else {
			err = s.delete(ctx, name)
		}
		if err != nil {
			return err
		}
		return s.respond(q, http.StatusNoContent, "", func() { q.w.WriteHeader(http.StatusNoContent) })
	case "create":
		created, err := s.createContainer(ctx, name)
		if err != nil {
			return err
		}
		status := http.StatusOK
		if created {
			status = http.StatusCreated
		}
		return s.respond(q, status, "", func() { q.w.WriteHeader(status) })
	case "list":
		names, err := s.list(ctx, name)
		if err != nil {
			return err
		}
		return s.respond(q, http.StatusOK, "", func() { writeJSON(q.w, http.StatusOK, names) })
	case "watch":
		return s.watch(q, name)
	}
	return fail(http.StatusMethodNotAllowed, "method %s not allowed", r.Method)
}

// serveRoot answers "/" as Custodia's Root does: a liveness message to GET.
func (s *Server) serveRoot(q *request) error {
	switch q.r.Method {
	case http.MethodGet:
		return s.respond(q, http.StatusOK, "", func() {
			writeJSON(q.w, http.StatusOK, map[string]string{"message": "sealrun secrets proxy"})
		})
	case http.MethodPut, http.MethodPost, http.MethodDelete:
		return fail(http.StatusMethodNotAllowed, "%s / is not served: secrets are under /secrets/", q.r.Method)
	}
	return fail(http.StatusNotImplemented, "method %s not implemented", q.r.Method)
}

// verbOf maps method and path shape to an authorization verb.
func verbOf(r *http.Request, container bool) (string, error) {
	switch {
	case r.Method == http.MethodGet && container && r.URL.Query().Get("watch") == "1":
		return "watch", nil
	case r.Method == http.MethodGet && container:
		return "list", nil
	case r.Method == http.MethodGet:
		return "get", nil
	case r.Method == http.MethodPut && !container:
		return "put", nil
	case r.Method == http.MethodDelete:
		return "delete", nil
	case r.Method == http.MethodPost && container:
		return "create", nil
	case r.Method == http.MethodPut, r.Method == http.MethodPost:
		return "", fail(http.StatusMethodNotAllowed, "%s needs %s", r.Method, map[bool]string{true: "a secret name (no trailing slash)", false: "a container (trailing slash)"}[r.Method == http.MethodPut])
	}
	// Custodia serves GET, PUT, POST and DELETE only and answers 501 to
	// any other method.
	return "", fail(http.StatusNotImplemented, "method %s not implemented", r.Method)
}

// methodLabel is the metric label of a request refused before its verb is
// known: any client can send any method, and each distinct label would be
// a new time series.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete, http.MethodHead, http.MethodPatch, http.MethodOptions:
		return strings.ToLower(m)
	}
	return "other"
}

func checkQueryType(r *http.Request) error {
	if t := r.URL.Query().Get("type"); t != "" && t != wire.TypeSimple {
		return fail(http.StatusNotAcceptable, "message type %q is not supported (only simple)", t)
	}
	return nil
}

// authenticate checks the API id/key headers and peer uid. Guessing is
// rate-limited before any key is checked, per peer and claimed id, so that
// one client with a wrong key does not lock out the others sharing its uid
// or address; and, ten times looser, per peer over all ids, so that made-up
// ids (each a backend read) cannot be sent without limit.
func (s *Server) authenticate(q *request) (*secrets.APICredential, error) {
	id := q.r.Header.Get(s.o.IDHeader)
	key := q.r.Header.Get(s.o.KeyHeader)
	peer := peerKey(q.r)
	fk := failKey{peer: peer, id: truncate(id, 128)}
	if s.failures.exhausted(fk) || s.peerFail.exhausted(peer) {
		q.w.Header().Set("Retry-After", "1")
		return nil, fail(http.StatusTooManyRequests, "too many failed authentications from this peer; wait before retrying")
	}
	failed := func() {
		s.failures.get(fk).Allow()
		s.peerFail.get(peer).Allow()
	}
	// A failed or missing authentication is 403, as Custodia's
	// SimpleAuthKeys answers it; wire.UnauthenticatedHeader tells
	// sealrun's client it was the credential, not the path.
	if id == "" || key == "" {
		failed()
		q.w.Header().Set(wire.UnauthenticatedHeader, "1")
		return nil, fail(http.StatusForbidden, "missing %s or %s header", s.o.IDHeader, s.o.KeyHeader)
	}
	q.rec.Credential = truncate(id, 128)
	cred, err := s.o.Credentials.Authenticate(q.r.Context(), id, key)
	if errors.Is(err, errUnauthenticated) {
		failed()
		q.w.Header().Set(wire.UnauthenticatedHeader, "1")
		return nil, fail(http.StatusForbidden, "%v (check the %s and %s headers)", err, s.o.IDHeader, s.o.KeyHeader)
	}
	if err != nil {
		return nil, err
	}
	// allowed_uids is about who may use the unix socket; a TLS client has
	// no uid, and its certificate already authenticated the connection.
	if len(s.o.AllowedUIDs) > 0 && q.r.TLS == nil {
		pc, ok := peerFrom(q.r.Context())
		allowed := false
		for _, u := range s.o.AllowedUIDs {
			allowed = allowed || (ok && pc.UID == u)
		}
		if !allowed {
			return nil, fail(http.StatusForbidden, "peer uid is not allowed to use this socket")
		}
	}
	return cred, nil
}

func peerKey(r *http.Request) string {
	if pc, ok := peerFrom(r.Context()); ok {
		return "uid:" + strconv.Itoa(pc.UID)
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return "addr:" + r.RemoteAddr
	}
	return "ip:" + host
}

// failKey is whom failed authentications are counted against.
type failKey struct{ peer, id string }

// maxFailLimiters bounds the per-id failure buckets: claimed ids are the
// client's choice. The per-peer buckets are few (uids, client addresses)
// and never start over, which made-up ids could otherwise force.
const maxFailLimiters = 4096

// respond audits, then (only if the audit line is durable) writes.
func (s *Server) respond(q *request, status int, reason string, write func()) error {
	if q.logged {
		return nil
	}
	q.logged = true
	q.rec.Status = status
	switch {
	case status < 400:
		q.rec.Outcome = "allowed"
	case status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusTooManyRequests:
		q.rec.Outcome = "denied"
	default:
		q.rec.Outcome = "error"
	}
	q.rec.Reason = truncate(reason, 512)
	if err := s.o.Audit.Log(context.WithoutCancel(q.r.Context()), q.rec); err != nil {
		s.o.Logger.Error("audit log failed; refusing the request", "err", err)
		// A change is made before its line is written: say so, rather
		// than that nothing happened.
		applied := status < 400 && (q.verb == "put" || q.verb == "create" || q.verb == "delete")
		msg := "audit log unavailable; the request was not served"
		switch {
		case applied:
			msg = "audit log unavailable; the change was made but is not confirmed: read it back before repeating it"
		case q.mayBeApplied:
			msg = "audit log unavailable, and the change may or may not have been made: read it back before repeating it"
		default:
			q.w.Header().Set(wire.NotAppliedHeader, "1")
		}
		status = http.StatusServiceUnavailable
		write = func() {
			writeJSON(q.w, status, map[string]string{"error": msg})
		}
	}
	s.reqs.WithLabelValues(q.verb, strconv.Itoa(status)).Inc()
	s.latency.WithLabelValues(q.verb).Observe(time.Since(q.start).Seconds())
	write()
	return nil
}

// backendError maps a storage error to a status with an actionable message
// naming no value.
func (s *Server) backendError(err error) *apiError {
	switch storage.Code(err) {
	case driver.NotFound:
		return &apiError{http.StatusNotFound, "not found"}
	case driver.Conflict:
		return &apiError{http.StatusConflict, "already exists or changed concurrently"}
	case driver.InvalidKey, driver.InvalidValue:
		if errors.Is(err, driver.ErrTooLarge) {
			return &apiError{http.StatusRequestEntityTooLarge, "value too large for the secret backend; store a smaller one, or raise the backend's request limit and then limits.max_body"}
		}
		return &apiError{http.StatusBadRequest, err.Error()}
	case driver.Unavailable, driver.Canceled:
		s.o.Logger.Warn("secret backend unavailable", "err", err)
		if errors.As(err, new(mayBeApplied)) {
			return &apiError{http.StatusServiceUnavailable, "secret backend did not confirm the change (unavailable or timed out); it may or may not have been made: read it back before repeating it"}
		}
		return &apiError{http.StatusServiceUnavailable, "secret backend unavailable; retry later"}
	case driver.PermissionDenied:
		// The proxy's own Vault token or etcd user was refused (expired,
		// revoked, policy changed): the client can only wait for an operator.
		s.o.Logger.Error("secret backend refused the proxy's credentials", "err", err)
		return &apiError{http.StatusServiceUnavailable, "secret backend refused the proxy's credentials; an operator must renew them (see the proxy log)"}
	case driver.Integrity:
		s.o.Logger.Error("stored value failed its integrity check", "err", err)
		return &apiError{http.StatusInternalServerError, "stored value failed its integrity check (tampered, or encrypted under a key this proxy does not hold)"}
	}
	s.o.Logger.Error("backend error", "err", err)
	return &apiError{http.StatusInternalServerError, "internal error; see the proxy log"}
}

// value is a secret as the API carries it. Like secrets.Secret it prints
// [REDACTED] under every fmt verb and slog; unlike it, its JSON is redacted
// too (the proxy never stores a value as JSON).
type value []byte

func (value) String() string               { return secrets.Redacted }
func (value) GoString() string             { return secrets.Redacted }
func (value) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(secrets.Redacted)) }
func (value) LogValue() slog.Value         { return slog.StringValue(secrets.Redacted) }
func (value) MarshalText() ([]byte, error) { return []byte(secrets.Redacted), nil }

func (s *Server) readValue(q *request) (value, error) {
	r := q.r
	body, err := io.ReadAll(http.MaxBytesReader(q.w, r.Body, s.o.MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, fail(http.StatusRequestEntityTooLarge, "body larger than %d bytes", s.o.MaxBody)
		}
		return nil, fail(http.StatusBadRequest, "reading body: %v", err)
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "application/octet-stream":
		if len(body) == 0 {
			// Custodia reads an empty body as none (400); an empty
			// value is stored as JSON {"value": ""}.
			return nil, fail(http.StatusBadRequest, `no body: send the value, or an empty one as JSON {"type": "simple", "value": ""}`)
		}
		return value(base64.StdEncoding.EncodeToString(body)), nil
	case "application/json":
	default:
		return nil, fail(http.StatusBadRequest, "Content-Type must be application/json or application/octet-stream")
	}
	var msg struct {
		Type  *string          `json:"type"`
		Value *json.RawMessage `json:"value"`
	}
	if err := json.Unmarshal(body, &msg); err != nil || msg.Type == nil {
		return nil, fail(http.StatusBadRequest, `body must be {"type": "simple", "value": "<string>"}`)
	}
	if *msg.Type != wire.TypeSimple {
		return nil, fail(http.StatusNotAcceptable, "message type %q is not supported (only simple)", *msg.Type)
	}
	var v string
	if msg.Value == nil || json.Unmarshal(*msg.Value, &v) != nil {
		return nil, fail(http.StatusBadRequest, "value must be a string")
	}
	return value(v), nil
}

func (s *Server) writeValue(q *request, v value) error {
	if accepts(q.r, "application/octet-stream") {
		raw, err := base64.StdEncoding.Strict().DecodeString(string(v))
		if err != nil {
			raw = v // stored as text: hand it back as it is
		}
		return s.respond(q, http.StatusOK, "", func() {
			q.w.Header().Set("Content-Type", "application/octet-stream")
			q.w.WriteHeader(http.StatusOK)
			q.w.Write(raw)
		})
	}
	return s.respond(q, http.StatusOK, "", func() {
		writeJSON(q.w, http.StatusOK, wire.Message{Type: wire.TypeSimple, Value: string(v)})
	})
}

func accepts(r *http.Request, ct string) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		if mt, _, _ := mime.ParseMediaType(strings.TrimSpace(part)); mt == ct {
			return true
		}
	}
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(b)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// sortedUnique sorts names and drops duplicates.
func sortedUnique(names []string) []string {
	sort.Strings(names)
	out := names[:0]
	for i, n := range names {
		if i == 0 || n != names[i-1] {
			out = append(out, n)
		}
	}
	return out
}

// HTTPServer returns an http.Server for s with timeouts against slow
// clients (watch streams lift the write deadline themselves) and unix peer
// credentials recorded for authorization and audit.
func (s *Server) HTTPServer() *http.Server {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ConnContext:       ConnContext,
		ErrorLog:          slog.NewLogLogger(s.o.Logger.Handler(), slog.LevelWarn),
	}
	hs.RegisterOnShutdown(s.stopStreams)
	return hs
}
