package audit

import (
	"strings"
	"testing"
)

// FuzzVerify: an audit file is untrusted input to `sealrun audit verify`.
func FuzzVerify(f *testing.F) {
	f.Add(`{"time":"2026-01-01T00:00:00Z","seq":1,"verb":"GET","path":"/secrets/a","status":200,"outcome":"allowed","prev":"` + genesis + `"}` + "\n")
	f.Add("{}\n{}\n")
	f.Fuzz(func(t *testing.T, s string) {
		res, err := Verify(strings.NewReader(s))
		if err == nil && res.Lines > 0 && len(res.LastHash) != 64 {
			t.Fatalf("verified without a hash: %+v", res)
		}
	})
}
