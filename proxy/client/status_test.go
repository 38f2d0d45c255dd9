package client

import (
	"errors"
	"net/http"
	"testing"

	"github.com/sealrun/sealrun/proxy/wire"
)

// The proxy answers 403 for a refused credential and for a forbidden path,
// as Custodia does; the marker header alone decides which error a caller
// sees, so the user is told to fix the credential or the grant.
func TestErrorForStatus(t *testing.T) {
	marked := http.Header{}
	marked.Set(wire.UnauthenticatedHeader, "1")
	for _, c := range []struct {
		name   string
		status int
		h      http.Header
		want   error
	}{
		{"marked 403", 403, marked, ErrUnauthorized},
		{"plain 403", 403, http.Header{}, ErrForbidden},
		{"401 from an older proxy", 401, http.Header{}, ErrUnauthorized},
		{"404", 404, marked, ErrNotFound},
		{"409", 409, nil, ErrConflict},
		{"503", 503, nil, ErrUnavailable},
	} {
		e := errorFor(c.status, c.h, []byte(`{"error":"what to do"}`))
		if !errors.Is(e, c.want) || e.Msg != "what to do" {
			t.Errorf("%s: %v (kind %v), want %v", c.name, e, e.kind, c.want)
		}
		for _, other := range []error{ErrUnauthorized, ErrForbidden} {
			if other != c.want && errors.Is(e, other) {
				t.Errorf("%s: also %v", c.name, other)
			}
		}
	}
}
