package interop

import (
	"bytes"
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/proxy/wire"
)

// differs is a deliberate difference from Custodia 0.6: both answers are
// pinned, so a change on either side fails the test. docs/custodia-compat.md
// lists the same rows.
type differs struct {
	custodia, sealrun int
	why               string
}

// The same requests, in order, to real Custodia 0.6 (SqliteStore +
// EncryptedOverlay, SimpleAuthKeys with CPD-101's header names,
// SimplePathAuthz "/. /secrets") and to the sealrun proxy configured the
// same way: statuses must be equal except for the listed deliberate
// differences, and the bodies of successful GETs (what Custodia's clients
// read) must be equal.
func TestStatusParityWithCustodia(t *testing.T) {
	cust := testenv.Custodia(t)
	seal, etcd := sealrunCPD(t, cust.MasterKey)

	const (
		good   = "good"
		none   = "none"
		wrong  = "wrong"
		idOnly = "id-only"
	)
	ctJSON := map[string]string{"Content-Type": "application/json"}
	ctBin := map[string]string{"Content-Type": "application/octet-stream"}
	simple := func(v string) string {
		b, _ := json.Marshal(wire.Message{Type: wire.TypeSimple, Value: v})
		return string(b)
	}
	rootMethod := differs{500, 405, "Custodia's Root has no handler for it and fails; sealrun says the method is not allowed there"}
	beforeAuth := differs{403, 400, "a malformed path is refused before authentication (it reveals nothing)"}
	rows := []struct {
		name         string
		method, path string
		auth         string
		hdr          map[string]string
		body         string
		diff         *differs
	}{
		// Authentication: 403 for none, a wrong key, an id without key.
		{"root without credential", "GET", "/", none, nil, "", nil},
		{"root with a wrong key", "GET", "/", wrong, nil, "", nil},
		{"root", "GET", "/", good, nil, "", &differs{200, 200, "same status and shape; the message names sealrun (Custodia's clients read only the status)"}},
		{"listing without credential", "GET", "/secrets/", none, nil, "", nil},
		{"value with a wrong key", "GET", "/secrets/c/v", wrong, nil, "", nil},
		{"value with an id but no key", "GET", "/secrets/c/v", idOnly, nil, "", nil},
		{"PUT without credential", "PUT", "/secrets/c/v", none, ctJSON, simple("x"), nil},
		{"POST without credential", "POST", "/secrets/c/", none, nil, "", nil},
		{"DELETE without credential", "DELETE", "/secrets/c/", none, nil, "", nil},
		{"bad path without credential", "GET", "/secrets/c/%00", none, nil, "", &beforeAuth},

		// Containers and values.
		{"root listing", "GET", "/secrets/", good, nil, "", &differs{403, 200, "sealrun lists the root container (migrate --from a sealrun proxy walks it); Custodia has no root listing"}},
		{"root listing without slash", "GET", "/secrets", good, nil, "", &differs{403, 200, "as the root listing"}},
		{"create container", "POST", "/secrets/c/", good, nil, "", nil},
		{"create it again", "POST", "/secrets/c/", good, nil, "", nil},
		{"put", "PUT", "/secrets/c/v", good, ctJSON, simple("value-one"), nil},
		{"put again", "PUT", "/secrets/c/v", good, ctJSON, simple("value-two"), nil},
		{"get", "GET", "/secrets/c/v", good, nil, "", nil},
		{"get ?type=simple", "GET", "/secrets/c/v?type=simple", good, nil, "", &differs{406, 200, "Custodia 0.6 refuses its own query form (parse_qs yields lists); its simple client sends no query"}},
		{"get ?type=kem", "GET", "/secrets/c/v?type=kem", good, nil, "", nil},
		{"get with an empty segment", "GET", "/secrets/c//v", good, nil, "", nil},
		{"list", "GET", "/secrets/c/", good, nil, "", nil},
		{"list with an empty segment", "GET", "/secrets/c//", good, nil, "", nil},
		{"missing value", "GET", "/secrets/c/missing", good, nil, "", nil},
		{"missing container", "GET", "/secrets/nope/", good, nil, "", nil},
		{"put into a missing container", "PUT", "/secrets/nope/x", good, ctJSON, simple("x"), nil},
		{"nested container under a missing one", "POST", "/secrets/nope/sub/", good, nil, "", nil},
		{"nested container", "POST", "/secrets/c/sub/", good, nil, "", nil},
		{"put nested", "PUT", "/secrets/c/sub/w", good, ctJSON, simple("nested"), nil},
		{"list with sub-container", "GET", "/secrets/c/", good, nil, "", nil},
		{"list sub-container", "GET", "/secrets/c/sub/", good, nil, "", nil},

		// Outside any container.
		{"put outside a container", "PUT", "/secrets/x", good, ctJSON, simple("x"), nil},
		{"get outside a container", "GET", "/secrets/x", good, nil, "", nil},
		{"delete outside a container", "DELETE", "/secrets/x", good, nil, "", nil},
		{"empty segment cannot escape the container", "PUT", "/secrets//x", good, ctJSON, simple("x"), &differs{201, 403, `Custodia joins "" away only after its container check, storing keys/x outside any container; sealrun collapses first and refuses`}},

		// Empty values.
		{"put empty value", "PUT", "/secrets/c/e", good, ctJSON, simple(""), nil},
		{"get empty value", "GET", "/secrets/c/e", good, nil, "", &differs{500, 200, "Custodia stores an empty value but fails serving it; sealrun serves it"}},
		{"list with empty value", "GET", "/secrets/c/", good, nil, "", nil},
		{"delete empty value", "DELETE", "/secrets/c/e", good, nil, "", nil},
		{"empty binary body", "PUT", "/secrets/c/e2", good, ctBin, "", nil},

		// Bodies.
		{"bad JSON", "PUT", "/secrets/c/b", good, ctJSON, "{not json", nil},
		{"non-string value", "PUT", "/secrets/c/b", good, ctJSON, `{"type":"simple","value":5}`, nil},
		{"unknown type", "PUT", "/secrets/c/b", good, ctJSON, `{"type":"kem","value":"x"}`, nil},
		{"no Content-Type", "PUT", "/secrets/c/b", good, nil, simple("x"), nil},
		{"binary put", "PUT", "/secrets/c/bin", good, ctBin, "\x00\x01binary\xff", nil},
		{"binary get", "GET", "/secrets/c/bin", good, map[string]string{"Accept": "application/octet-stream"}, "", nil},
		{"binary value as JSON", "GET", "/secrets/c/bin", good, nil, "", nil},

		// Dot segments and encodings.
		{"dot-dot", "GET", "/secrets/c/../c/v", good, nil, "", nil},
		{"dot", "GET", "/secrets/c/./v", good, nil, "", nil},
		{"put through dot-dot", "PUT", "/secrets/c/../c/w", good, ctJSON, simple("x"), nil},
		{"encoded slash", "GET", "/secrets/c%2Fv", good, nil, "", &differs{403, 400, "Custodia decodes %2F into the name after its path authorization saw the encoded path: an encoded slash crosses an authz boundary"}},
		{"encoded slash in a segment", "GET", "/secrets/c/%2Fv", good, nil, "", &differs{404, 400, "as the encoded slash"}},
		{"encoded dot-dot", "GET", "/secrets/c/%2e%2e/c/v", good, nil, "", &differs{404, 400, "an encoded dot segment is an obfuscated traversal"}},
		{"NUL", "GET", "/secrets/c/v%00x", good, nil, "", &differs{404, 400, "NUL: names differ by backend (C strings truncate)"}},
		{"encoded backslash", "GET", "/secrets/c/a%5cb", good, nil, "", &differs{404, 400, "a backslash is a separator to some clients and backends"}},
		{"control byte", "GET", "/secrets/c/a%01b", good, nil, "", &differs{404, 400, "control bytes forge audit and log lines"}},
		{"over-long path", "GET", "/secrets/c/" + strings.Repeat("a", 1100), good, nil, "", &differs{404, 400, "paths are bounded (1 KiB) before any backend call"}},
		{"create a container named ..", "POST", "/secrets/c/../", good, nil, "", &differs{201, 404, `Custodia creates a container literally named ".."; sealrun never stores a dot segment`}},

		// Methods.
		{"POST a value", "POST", "/secrets/c/v", good, nil, "", nil},
		{"PUT a container", "PUT", "/secrets/c/", good, ctJSON, simple("x"), nil},
		{"HEAD", "HEAD", "/secrets/c/v", good, nil, "", nil},
		{"PATCH", "PATCH", "/secrets/c/v", good, nil, "", nil},
		{"unknown method", "BREW", "/secrets/c/v", good, nil, "", nil},
		{"PUT /", "PUT", "/", good, ctJSON, simple("x"), &rootMethod},
		{"POST /", "POST", "/", good, nil, "", &rootMethod},
		{"DELETE /", "DELETE", "/", good, nil, "", &rootMethod},
		{"HEAD /", "HEAD", "/", good, nil, "", nil},
		{"outside /secrets", "GET", "/other", good, nil, "", nil},
		{"outside /secrets without credential", "GET", "/other", none, nil, "", nil},

		// Deletes.
		{"delete non-empty container", "DELETE", "/secrets/c/", good, nil, "", nil},
		{"delete value", "DELETE", "/secrets/c/v", good, nil, "", nil},
		{"delete it again", "DELETE", "/secrets/c/v", good, nil, "", nil},
		{"delete missing container", "DELETE", "/secrets/nope/", good, nil, "", nil},
		{"delete nested value", "DELETE", "/secrets/c/sub/w", good, nil, "", nil},
		{"delete nested container", "DELETE", "/secrets/c/sub/", good, nil, "", nil},
		{"get after delete", "GET", "/secrets/c/v", good, nil, "", nil},
	}

	type server struct {
		name, sock, id, key string
	}
	servers := []server{{"custodia", cust.Socket, cust.ID, cust.Key}, {"sealrun", seal.Socket, seal.ID, seal.Key}}
	headers := func(s server, auth string, extra map[string]string) map[string]string {
		h := map[string]string{}
		switch auth {
		case good:
			h[cpdIDHeader], h[cpdKeyHeader] = s.id, s.key
		case wrong:
			h[cpdIDHeader], h[cpdKeyHeader] = s.id, "wrong-"+s.key[:4]
		case idOnly:
			h[cpdIDHeader] = s.id
		}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	for _, r := range rows {
		var got [2]reply
		for i, s := range servers {
			got[i] = rawDo(t, s.sock, r.method, r.path, headers(s, r.auth, r.hdr), r.body)
		}
		c, s := got[0], got[1]
		switch {
		case r.diff == nil && c.status != s.status:
			t.Errorf("%s (%s %s): Custodia %d, sealrun %d %s", r.name, r.method, r.path, c.status, s.status, s.body)
		case r.diff != nil && (c.status != r.diff.custodia || s.status != r.diff.sealrun):
			t.Errorf("%s (%s %s): Custodia %d, sealrun %d; the deliberate difference is Custodia %d, sealrun %d (%s)",
				r.name, r.method, r.path, c.status, s.status, r.diff.custodia, r.diff.sealrun, r.diff.why)
		}
		if r.method == "GET" && c.status == 200 && s.status == 200 && r.diff == nil && !sameBody(c, s) {
			t.Errorf("%s (%s %s): bodies differ:\nCustodia %q\nsealrun  %q", r.name, r.method, r.path, c.body, s.body)
		}
		// The 403 of a failed authentication is marked for sealrun's
		// own client, and only that 403.
		if s.status == 403 {
			if marked := s.header.Get(wire.UnauthenticatedHeader) != ""; marked != (r.auth != good) {
				t.Errorf("%s: sealrun's 403 %s marked unauthenticated: %v", r.name, s.body, marked)
			}
		}
		t.Logf("%-45s %-6s %-24s custodia %d  sealrun %d", r.name, r.method, r.path, c.status, s.status)
	}

	// What the proxy stored is Custodia's records where Custodia's
	// EtcdStore keeps them: a compact JWE at <namespace>/keys/c/bin, the
	// container as the empty record <namespace>/keys/c.
	for k, jwe := range map[string]bool{cpdNamespace + "/keys/c/bin": true, cpdNamespace + "/keys/c": false} {
		resp, err := etcd.Get(t.Context(), k)
		if err != nil || len(resp.Kvs) != 1 {
			t.Errorf("etcd %s: %v, want the record", k, err)
			continue
		}
		if v := string(resp.Kvs[0].Value); jwe && strings.Count(v, ".") != 4 || !jwe && v != "" {
			t.Errorf("etcd %s: %d bytes, want %s", k, len(v), map[bool]string{true: "a compact JWE", false: "empty (a container)"}[jwe])
		}
	}
}

// sameBody compares what a Custodia client reads from a GET: the JSON
// (listings as sets; Custodia's order is its store's) or the raw bytes.
func sameBody(a, b reply) bool {
	ct := func(r reply) string { return strings.Split(r.header.Get("Content-Type"), ";")[0] }
	if ct(a) != ct(b) {
		return false
	}
	if ct(a) != "application/json" {
		return bytes.Equal(a.body, b.body)
	}
	var x, y any
	if json.Unmarshal(a.body, &x) != nil || json.Unmarshal(b.body, &y) != nil {
		return false
	}
	return reflect.DeepEqual(norm(x), norm(y))
}

func norm(v any) any {
	l, ok := v.([]any)
	if !ok {
		return v
	}
	s := make([]string, 0, len(l))
	for _, e := range l {
		b, _ := json.Marshal(e)
		s = append(s, string(b))
	}
	sort.Strings(s)
	return s
}
