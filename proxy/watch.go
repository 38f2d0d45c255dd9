package proxy

import (
	"io"
	"net/http"
	"path"
	"time"

	"github.com/sealrun/sealrun/proxy/wire"
	"github.com/sealrun/sealrun/secrets"
)

// heartbeat keeps idle streams alive through proxies and lets the server
// notice clients that went away.
const heartbeat = 15 * time.Second

// watch streams changes below name as server-sent events. The first event is
// "ready": changes after it are delivered, so a client caches only values it
// reads after seeing it.
func (s *Server) watch(q *request, name string) error {
	t, err := resolve(name)
	if err != nil {
		return err
	}
	kind, prefix, base := secrets.KindRaw, name, wire.Root
	if t.typed {
		if t.kind == "" {
			return fail(http.StatusBadRequest, "watch a kind: /secrets/%s/<kind>/?watch=1", typedPrefix)
		}
		kind, prefix, base = t.kind, t.key, wire.Root+typedPrefix+"/"+t.kind+"/"
	} else if err := s.containerExists(q.r.Context(), name); err != nil {
		return err
	}
	cred := q.rec.Credential
	if !s.openStream(cred) {
		q.w.Header().Set("Retry-After", "5")
		return fail(http.StatusTooManyRequests, "credential %s already holds %d watch streams; close one or watch a common prefix", cred, s.o.MaxWatchStreams)
	}
	defer s.closeStream(cred)
	ctx := q.r.Context()
	events, err := s.o.Store.Watch(ctx, kind, prefix)
	if err != nil {
		return err
	}
	if s.values != nil {
		// Reads after "ready" must be at least as new as this stream.
		s.values.flushPrefix(kind, prefix)
	}
	w := q.w
	s.respond(q, http.StatusOK, "", func() {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
	})
	rc := http.NewResponseController(w)
	// A stream outlives the server's write timeout, but each write has its
	// own: a client that stops reading loses its stream, not the server a
	// handler and a backend watch.
	write := func(f func() error) bool {
		rc.SetWriteDeadline(time.Now().Add(s.o.StreamWriteTimeout))
		return f() == nil && rc.Flush() == nil
	}
	send := func(event string, data any) bool {
		return write(func() error { return wire.WriteEvent(w, event, data) })
	}
	if !send(wire.EventReady, struct{}{}) {
		return nil
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.streams.Done():
			return nil
		case <-tick.C:
			if !write(func() error { _, err := io.WriteString(w, wire.Ping); return err }) {
				return nil
			}
		case ev, ok := <-events:
			if !ok {
				send(wire.EventError, wire.ErrorBody{Error: "watch ended; re-read and watch again"})
				return nil
			}
			if ev.Err != nil {
				s.o.Logger.Warn("watch failed", "err", ev.Err)
				send(wire.EventError, wire.ErrorBody{Error: "watch failed; re-read and watch again"})
				return nil
			}
			// The value cache's own watch may see this change later than
			// this stream: drop the entry first, so a client re-reading on
			// the event cannot be served (and then cache) the old value.
			if s.values != nil {
				s.values.invalidate(kind, ev.Key)
			}
			if !send(wire.EventChange, wire.Event{Type: ev.Type.String(), Path: base + path.Clean(ev.Key), Revision: ev.Revision}) {
				return nil
			}
		}
	}
}

// openStream counts a watch stream against cred, or says it holds its
// maximum already.
func (s *Server) openStream(cred string) bool {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	if s.openStreams[cred] >= s.o.MaxWatchStreams {
		return false
	}
	if s.openStreams == nil {
		s.openStreams = map[string]int{}
	}
	s.openStreams[cred]++
	return true
}

func (s *Server) closeStream(cred string) {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	if s.openStreams[cred]--; s.openStreams[cred] <= 0 {
		delete(s.openStreams, cred)
	}
}
