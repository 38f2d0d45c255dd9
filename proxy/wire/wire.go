// Package wire is the secrets proxy's HTTP protocol as both ends speak it:
// the header defaults, Custodia's message body and the watch stream's
// server-sent events. The server (proxy) and its client (proxy/client) both
// import it, so neither can drift from the other.
package wire

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Default header names: CPD-101's id header and Custodia's default key header.
const (
	DefaultIDHeader  = "CUSTODIA_AUTH_ID"
	DefaultKeyHeader = "CUSTODIA_AUTH_KEY"
)

// NotAppliedHeader on a 429 or 503 says the request changed nothing, so a
// client may repeat even a PUT or DELETE.
const NotAppliedHeader = "Sealrun-Not-Applied"

// UnauthenticatedHeader marks a 403 as a failed or missing authentication.
// The proxy answers 403 for both a bad credential and a forbidden path, as
// Custodia 0.6's SimpleAuthKeys does (its clients see the same status); the
// header lets sealrun's own client tell the user which one to fix.
const UnauthenticatedHeader = "Sealrun-Unauthenticated"

// Root is the prefix of every secret path.
const Root = "/secrets/"

// TypeSimple is the only Custodia message type served.
const TypeSimple = "simple"

// Message is Custodia's value body, {"type": "simple", "value": "..."}, in
// requests and replies.
type Message struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// Event is one change event of GET /secrets/<prefix>/?watch=1. It names what
// changed, never the value: clients re-read what they cache.
type Event struct {
	Type     string `json:"type"` // "put" or "delete"
	Path     string `json:"path"` // e.g. /secrets/sealrun/signing-key/rmq_cpu_
	Revision int64  `json:"revision"`
}

// Name is the event's path without the leading /secrets/.
func (e Event) Name() string { return strings.TrimPrefix(e.Path, Root) }

// The watch stream's event names. "ready" comes first: changes after it are
// delivered. "error" ends the stream with an ErrorBody.
const (
	EventReady  = "ready"
	EventChange = "change"
	EventError  = "error"
)

// ErrorBody is the data of an "error" event.
type ErrorBody struct {
	Error string `json:"error"`
}

// Ping is a comment line that keeps an idle stream alive.
const Ping = ": ping\n\n"

// WriteEvent writes one server-sent event with data as its JSON.
func WriteEvent(w io.Writer, name string, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", name, b)
	return err
}

// ReadEvents calls fn with each event's name and data until the stream ends,
// fn returns false, or reading fails (the error, if any, is returned).
func ReadEvents(r io.Reader, fn func(name string, data []byte) bool) error {
	sc := bufio.NewScanner(r)
	var name string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if !fn(name, []byte(strings.TrimPrefix(line, "data: "))) {
				return nil
			}
		}
	}
	return sc.Err()
}
