// Package client talks to the sealrun secrets proxy over its unix socket (or
// a TLS URL), as the runner and the CLI do. Every call takes a context,
// retries 503/429 and connection failures with jittered backoff (a change
// only if it cannot have reached the proxy), and returns typed errors. Reads
// can be cached: Watch-driven invalidation keeps the cache correct, and a
// broken watch drops the cache rather than serving stale values.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"golang.org/x/net/http/httpguts"

	"github.com/sealrun/sealrun/internal/wait"
	"github.com/sealrun/sealrun/internal/watchcache"
	"github.com/sealrun/sealrun/proxy/wire"
	"github.com/sealrun/sealrun/secrets"
)

// Typed errors for the statuses a caller decides on.
var (
	ErrNotFound     = errors.New("secret not found")
	ErrUnauthorized = errors.New("proxy rejected the API id or key")
	ErrForbidden    = errors.New("credential is not allowed this path or verb")
	ErrConflict     = errors.New("secret already exists")
	// ErrChanged: a Replace found the value deleted or changed under it.
	ErrChanged     = errors.New("secret changed or deleted since it was read")
	ErrUnavailable = errors.New("secrets proxy unavailable")
)

// Error is a non-2xx answer.
type Error struct {
	Status int
	Msg    string // the proxy's error body (never a value)
	kind   error
}

func (e *Error) Error() string { return fmt.Sprintf("secrets proxy: %d %s", e.Status, e.Msg) }
func (e *Error) Unwrap() error { return e.kind }

// Config says how to reach the proxy.
type Config struct {
	Socket string      // unix socket path (preferred)
	URL    string      // https://host:port, when not on the socket
	TLS    *tls.Config // client certificate etc. for URL
	ID     string
	Key    APIKey // or KeyFile
	// KeyFile holds the API key (a systemd credential, a Kubernetes Secret
	// mount); read once at New.
	KeyFile   string
	IDHeader  string // default wire.DefaultIDHeader
	KeyHeader string // default wire.DefaultKeyHeader
	CacheTTL  time.Duration
	Timeout   time.Duration // per attempt; default 10s
	Retries   int           // default 4
}

// APIKey is the proxy API key. Every form meant for people or files — fmt
// verbs, slog, text and JSON marshalling — prints [REDACTED], so a logged
// or dumped Config does not carry the key.
type APIKey string

func (APIKey) String() string               { return secrets.Redacted }
func (APIKey) GoString() string             { return secrets.Redacted }
func (APIKey) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(secrets.Redacted)) }
func (APIKey) LogValue() slog.Value         { return slog.StringValue(secrets.Redacted) }
func (APIKey) MarshalText() ([]byte, error) { return []byte(secrets.Redacted), nil }

// Client is safe for concurrent use.
type Client struct {
	cfg  Config
	base string
	http *http.Client

	// cache serves whether or not a watch runs: KeepCacheFresh empties it
	// whenever its watch is down.
	cache *watchcache.Cache[string, []byte]
}

// New returns a client. The key is taken from Config.Key, Config.KeyFile or
// the SEALRUN_API_KEY environment variable, in that order.
func New(cfg Config) (*Client, error) {
	if cfg.IDHeader == "" {
		cfg.IDHeader = wire.DefaultIDHeader
	}
	if cfg.KeyHeader == "" {
		cfg.KeyHeader = wire.DefaultKeyHeader
	}
	for _, h := range []string{cfg.IDHeader, cfg.KeyHeader} {
		if !httpguts.ValidHeaderFieldName(h) {
			return nil, fmt.Errorf("%q is not a valid HTTP header name for the API id or key", h)
		}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 4
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = 30 * time.Second
	}
	if cfg.Key == "" && cfg.KeyFile != "" {
		b, err := os.ReadFile(cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("API key file: %w", err)
		}
		cfg.Key = APIKey(strings.TrimSpace(string(b)))
	}
	if cfg.Key == "" {
		cfg.Key = APIKey(os.Getenv("SEALRUN_API_KEY"))
	}
	if cfg.ID == "" || cfg.Key == "" {
		return nil, errors.New("secrets proxy client needs an API id and key (key from key_file or SEALRUN_API_KEY)")
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second, TLSClientConfig: cfg.TLS}
	c := &Client{cfg: cfg, cache: watchcache.New(watchcache.Options[string, []byte]{TTL: cfg.CacheTTL, AlwaysLive: true})}
	switch {
	case cfg.Socket != "":
		sock := cfg.Socket
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}
		c.base = "http://sealrun-proxy"
	case cfg.URL != "":
		u, err := url.Parse(cfg.URL)
		if err != nil || u.Scheme != "https" {
			return nil, fmt.Errorf("proxy URL %q must be https://host:port", cfg.URL)
		}
		c.base = strings.TrimSuffix(cfg.URL, "/")
	default:
		return nil, errors.New("secrets proxy client needs a socket path or an https URL")
	}
	c.http = &http.Client{Transport: tr}
	return c, nil
}

// A Client prints as where it connects and its API id: fmt's fallback for
// a struct with unexported fields would print the key and cached values.
func (c *Client) String() string {
	return fmt.Sprintf("secrets proxy client %s id=%s", c.base, c.cfg.ID)
}
func (c *Client) GoString() string             { return c.String() }
func (c *Client) Format(f fmt.State, _ rune)   { _, _ = f.Write([]byte(c.String())) }
func (c *Client) LogValue() slog.Value         { return slog.StringValue(c.String()) }
func (c *Client) MarshalText() ([]byte, error) { return []byte(c.String()), nil }

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

func escapeName(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// do sends one request with retries; body may be nil. The response body is
// returned read, except for streams (stream=true).
func (c *Client) do(ctx context.Context, method, path string, body []byte, hdr map[string]string) ([]byte, error) {
	var out []byte
	err := wait.Retry(ctx, wait.Backoff(100*time.Millisecond, 2*time.Second), uint(max(c.cfg.Retries, 1)), nil, func() error {
		var retry bool
		var err error
		out, retry, err = c.once(ctx, method, path, body, hdr)
		if err != nil && !retry {
			return backoff.Permanent(err)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (c *Client) once(ctx context.Context, method, path string, body []byte, hdr map[string]string) ([]byte, bool, error) {
	actx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(actx, method, c.base+path, rd)
	if err != nil {
		return nil, false, err
	}
	req.Header.Set(c.cfg.IDHeader, c.cfg.ID)
	req.Header.Set(c.cfg.KeyHeader, string(c.cfg.Key))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	// A PUT, POST or DELETE that failed in flight may have taken effect:
	// repeating it would answer 409 or 404 for a change that succeeded. It
	// is repeated only when it never left (a failed dial); the caller
	// re-reads to learn the outcome.
	idempotent := method == http.MethodGet
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, ctx.Err()
		}
		if idempotent || isDialError(err) {
			return nil, true, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		return nil, false, fmt.Errorf("%w: %s %s: no answer, the change may or may not have been made (read it back before retrying): %v",
			ErrUnavailable, method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil && idempotent {
		return nil, true, fmt.Errorf("%w: reading response: %v", ErrUnavailable, err)
	}
	// A change's status line is its outcome, even if the body was cut
	// (callers of PUT, POST and DELETE use only the status).
	if resp.StatusCode < 300 {
		return out, false, nil
	}
	e := errorFor(resp.StatusCode, resp.Header, out)
	// A change answered 503 may have been made (the proxy's backend timed
	// out after committing it): repeated only if the proxy says it was not.
	retry := errors.Is(e, ErrUnavailable) && (idempotent || resp.Header.Get(wire.NotAppliedHeader) == "1")
	return nil, retry, e
}

// isDialError says the request never reached the server.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// errorFor turns a non-2xx answer into an *Error wrapping the typed error a
// caller decides on; 503 and 429 are ErrUnavailable (worth retrying). A 403
// is ErrUnauthorized when the proxy marks it a failed authentication (it
// answers 403 for both, as Custodia does); 401 is from older proxies.
func errorFor(status int, h http.Header, body []byte) *Error {
	var eb struct{ Error string }
	json.Unmarshal(body, &eb)
	e := &Error{Status: status, Msg: eb.Error}
	switch status {
	case http.StatusNotFound:
		e.kind = ErrNotFound
	case http.StatusUnauthorized:
		e.kind = ErrUnauthorized
	case http.StatusForbidden:
		e.kind = ErrForbidden
		if h.Get(wire.UnauthenticatedHeader) != "" {
			e.kind = ErrUnauthorized
		}
	case http.StatusConflict:
		e.kind = ErrConflict
	case http.StatusPreconditionFailed:
		e.kind = ErrChanged
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		e.kind = ErrUnavailable
	}
	return e
}

// Get reads a value, from the cache when fresh.
func (c *Client) Get(ctx context.Context, name string) ([]byte, error) {
	v, gen, ok := c.cache.Get(name)
	if ok {
		return v, nil
	}
	v, err := c.GetFresh(ctx, name)
	if err != nil {
		return nil, err
	}
	c.cache.Fill(name, v, gen) // unless an invalidation raced the fetch
	return v, nil
}

// GetFresh reads a value from the proxy, bypassing the cache.
func (c *Client) GetFresh(ctx context.Context, name string) ([]byte, error) {
	out, err := c.do(ctx, http.MethodGet, wire.Root+escapeName(name), nil, nil)
	if err != nil {
		return nil, err
	}
	var msg wire.Message
	if err := json.Unmarshal(out, &msg); err != nil || msg.Type != wire.TypeSimple {
		return nil, fmt.Errorf("secrets proxy: unexpected reply to GET %s", name)
	}
	return []byte(msg.Value), nil
}

// Put creates a value; ErrConflict if it exists.
func (c *Client) Put(ctx context.Context, name string, v []byte) error {
	body, _ := json.Marshal(wire.Message{Type: wire.TypeSimple, Value: string(v)})
	_, err := c.do(ctx, http.MethodPut, wire.Root+escapeName(name), body, map[string]string{"Content-Type": "application/json"})
	c.Invalidate(name)
	return err
}

// Replace overwrites an existing value in one compare-and-set write (PUT
// with If-Match: *, a sealrun proxy extension): readers see the old value
// or the new one, never none. ErrChanged if it does not exist.
func (c *Client) Replace(ctx context.Context, name string, v []byte) error {
	body, _ := json.Marshal(map[string]string{"type": "simple", "value": string(v)})
	_, err := c.do(ctx, http.MethodPut, "/secrets/"+escapeName(name), body,
		map[string]string{"Content-Type": "application/json", "If-Match": "*"})
	c.Invalidate(name)
	return err
}

// Delete removes a value.
func (c *Client) Delete(ctx context.Context, name string) error {
	_, err := c.do(ctx, http.MethodDelete, wire.Root+escapeName(name), nil, nil)
	c.Invalidate(name)
	return err
}

// CreateContainer creates a container (parents must exist).
func (c *Client) CreateContainer(ctx context.Context, name string) error {
	_, err := c.do(ctx, http.MethodPost, wire.Root+escapeName(strings.TrimSuffix(name, "/"))+"/", nil, nil)
	return err
}

// List returns a container's subtree, as the proxy sorts it.
func (c *Client) List(ctx context.Context, container string) ([]string, error) {
	p := wire.Root
	if container = strings.Trim(container, "/"); container != "" {
		p += escapeName(container) + "/"
	}
	out, err := c.do(ctx, http.MethodGet, p, nil, nil)
	if err != nil {
		return nil, err
	}
	var names []string
	if err := json.Unmarshal(out, &names); err != nil {
		return nil, fmt.Errorf("secrets proxy: unexpected reply to list %s", container)
	}
	return names, nil
}

// Invalidate drops name from the cache.
func (c *Client) Invalidate(name string) { c.cache.Invalidate(name) }

// InvalidateAll empties the cache.
func (c *Client) InvalidateAll() { c.cache.Flush(nil) }

// Event is a change under a watched container.
type Event = wire.Event

// Watch streams changes below container until ctx ends or the stream breaks
// (then the channel closes). It returns once the server is watching (ready
// is then closed): values read after it are covered by the stream. A proxy
// that is not watching within the per-attempt Timeout (its backend may be
// unreachable) fails the watch with ErrUnavailable.
func (c *Client) Watch(ctx context.Context, container string) (events <-chan Event, ready <-chan struct{}, err error) {
	name := strings.Trim(container, "/")
	// The stream lives as long as ctx, so the deadline for opening it is a
	// timer that cancels it, stopped once ready arrives.
	sctx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(c.cfg.Timeout, cancel)
	fail := func(err error) (<-chan Event, <-chan struct{}, error) {
		timedOut := !timer.Stop() // it fired: the deadline cancelled sctx
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil, nil, ctx.Err()
		case timedOut:
			return nil, nil, fmt.Errorf("%w: watch %s: the proxy was not watching within %v (is its backend reachable?); watch again later",
				ErrUnavailable, name, c.cfg.Timeout)
		}
		return nil, nil, err
	}
	req, err := http.NewRequestWithContext(sctx, http.MethodGet, c.base+wire.Root+escapeName(name)+"/?watch=1", nil)
	if err != nil {
		return fail(err)
	}
	req.Header.Set(c.cfg.IDHeader, c.cfg.ID)
	req.Header.Set(c.cfg.KeyHeader, string(c.cfg.Key))
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.http.Do(req)
	if err != nil {
		return fail(fmt.Errorf("%w: %v", ErrUnavailable, err))
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		e := errorFor(resp.StatusCode, resp.Header, b)
		if e.kind == nil {
			e.kind = ErrUnavailable
		}
		return fail(e)
	}
	out := make(chan Event, 16)
	rdy := make(chan struct{})
	done := make(chan struct{})
	var ended string // the proxy's error event, read after done
	go func() {
		defer close(done)
		defer cancel()
		defer close(out)
		defer resp.Body.Close()
		readyClosed := false
		wire.ReadEvents(resp.Body, func(event string, data []byte) bool {
			switch event {
			case wire.EventReady:
				if !readyClosed {
					close(rdy)
					readyClosed = true
				}
			case wire.EventChange:
				var ev Event
				if json.Unmarshal(data, &ev) == nil {
					select {
					case out <- ev:
					case <-sctx.Done():
						return false
					}
				}
			case wire.EventError:
				var eb wire.ErrorBody
				json.Unmarshal(data, &eb)
				ended = eb.Error
				return false
			}
			return true
		})
	}()
	select {
	case <-rdy:
	case <-done:
		select {
		case <-rdy: // ready, then the stream ended: the caller sees the break
		default:
			if ended == "" {
				ended = "the stream ended"
			}
			return fail(fmt.Errorf("%w: watch %s: %s before the proxy was watching; watch again", ErrUnavailable, name, ended))
		}
	}
	if !timer.Stop() {
		// The deadline passed just as ready came: the stream is cancelled.
		return fail(nil)
	}
	return out, rdy, nil
}

// KeepCacheFresh watches containers and invalidates cached values as they
// change, until ctx ends. Whenever a watch is not established (at start,
// after a break, while the proxy does not start one) the cache is dropped,
// so no value outlives a missed event for longer than it takes to notice the
// break. onChange, if set, is called for every event, and with a zero Event
// when a watch is (re)established and when one breaks or cannot be opened
// (once until it is established again).
func (c *Client) KeepCacheFresh(ctx context.Context, onChange func(Event), containers ...string) {
	var wg sync.WaitGroup
	for _, ct := range containers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			told := false // onChange knows the watch is down
			watchcache.Follow(ctx, func(ctx context.Context) (<-chan Event, error) {
				c.InvalidateAll()
				events, _, err := c.Watch(ctx, ct) // watching, or failed within the Timeout
				return events, err
			}, func() {
				c.InvalidateAll() // anything cached before ready may be stale
				if onChange != nil {
					onChange(Event{})
				}
				told = false
			}, func(ev Event) bool {
				c.Invalidate(ev.Name())
				if onChange != nil {
					onChange(ev)
				}
				return true
			}, func(error, time.Duration) {
				// No watch: whoever relies on it re-reads now, so an
				// unreachable backend is noticed, not assumed away.
				if onChange != nil && !told && ctx.Err() == nil {
					onChange(Event{})
					told = true
				}
			})
		}()
	}
	wg.Wait()
}
