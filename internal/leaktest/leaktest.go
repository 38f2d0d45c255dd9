// Package leaktest checks that a value holding secret bytes redacts itself
// in every form a program might print or marshal it.
package leaktest

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// Verbs are the fmt verbs every secret-holding type must survive.
var Verbs = []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"}

// Render prints v every way a program might: each fmt verb, nested in a
// struct and a slice, wrapped in an error, through slog's JSON and text
// handlers, and json.Marshal.
func Render(v any) string {
	var buf bytes.Buffer
	for _, verb := range Verbs {
		fmt.Fprintf(&buf, verb+"\n", v)
	}
	fmt.Fprintf(&buf, "%+v\n", struct{ K any }{v})
	fmt.Fprintf(&buf, "%#v\n", []any{v})
	fmt.Fprintln(&buf, fmt.Errorf("wrapped: %v", v))
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("value", "v", v)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("value", "v", v)
	if b, err := json.Marshal(v); err == nil {
		buf.Write(b)
	} else {
		fmt.Fprintf(&buf, "json: %v\n", err)
	}
	return buf.String()
}

// encodings are the forms a secret's bytes take in printed output.
func encodings(secret []byte) []string {
	return []string{
		string(secret), hex.EncodeToString(secret), strings.ToUpper(hex.EncodeToString(secret)),
		base64.StdEncoding.EncodeToString(secret), base64.RawStdEncoding.EncodeToString(secret),
		base64.URLEncoding.EncodeToString(secret), base64.RawURLEncoding.EncodeToString(secret),
		fmt.Sprint([]byte(secret)), fmt.Sprintf("%#v", []byte(secret)),
	}
}

// NoSecret fails t if any rendering of v contains any of secrets in any
// common encoding. Each secret must be long enough (8+ bytes) that a match
// is not chance.
func NoSecret(t testing.TB, name string, v any, secrets ...[]byte) {
	t.Helper()
	out := Render(v)
	for _, s := range secrets {
		if len(s) < 8 {
			t.Fatalf("%s: a %d-byte secret is too short to search for", name, len(s))
		}
		for _, enc := range encodings(s) {
			if strings.Contains(out, enc) {
				t.Errorf("%s: secret bytes printed (as %.16q…):\n%s", name, enc, out)
				break
			}
		}
	}
}
