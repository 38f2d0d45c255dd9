package backup

import (
	"bytes"
	"strings"
	"testing"
)

// FuzzParseShares: share files and typed lines are untrusted input. Parse
// never panics, and whatever it accepts prints back to lines that parse to
// the same share, and Combine never panics on it.
func FuzzParseShares(f *testing.F) {
	shares, err := Split([]byte(`{"k":"c2VjcmV0LWtleS1ieXRlcy1mb3ItZnV6emluZy0xMjM0NTY3ODkwMTIzNDU2Nzg5MA","kid":"fuzz","kty":"oct"}`), "fuzz", 3, 2)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range shares {
		f.Add(s.Text())
	}
	f.Add([]byte(shares[0].Lines() + shares[1].Lines()))
	f.Add([]byte("01 ABCDE FGHJK R5FY\n"))
	f.Add([]byte("format: sealrun-share/9\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		got, err := Parse(bytes.NewReader(in), "fuzz")
		if err != nil {
			if got != nil {
				t.Fatal("shares returned with an error")
			}
			return
		}
		for _, s := range got {
			again, err := Parse(strings.NewReader(s.Lines()), "again")
			if err != nil || len(again) != 1 || again[0].KeyID != s.KeyID || !bytes.Equal(again[0].value, s.value) {
				t.Fatalf("accepted share does not round-trip: %v", err)
			}
		}
		_, _ = Combine(got)
	})
}
