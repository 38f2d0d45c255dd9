package proxy

import (
	"net/url"
	"strings"
	"testing"
)

// FuzzCleanSecretPath: whatever the client sends, an accepted name has no
// empty, "." or ".." segment, no control byte and no backslash, so no
// backend can resolve it to another name; and it is the path's own segments
// with only the empty ones collapsed, so authorization sees what is served.
func FuzzCleanSecretPath(f *testing.F) {
	for _, s := range []string{"/secrets/a/b", "/secrets/a/", "/secrets/a/../b", "/secrets/%2e%2e/x", "/secrets//a", "/secrets/a%2fb", "/secrets/\x00", "/secrets", "/secrets/a//b/", "/other", "/secrets/a/./b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		decoded, err := url.PathUnescape(raw)
		if err != nil {
			return // net/http refuses such request lines before us
		}
		name, _, err := cleanSecretPath(raw, decoded)
		if err != nil {
			return
		}
		if name == "" {
			return
		}
		for _, seg := range strings.Split(name, "/") {
			if seg == "" || seg == "." || seg == ".." {
				t.Fatalf("accepted %q as %q", raw, name)
			}
		}
		if strings.ContainsAny(name, "\\\x00") || len(name) > MaxPathLen {
			t.Fatalf("accepted %q as %q", raw, name)
		}
		var segs []string
		for _, seg := range strings.Split(strings.TrimPrefix(decoded, "/secrets/"), "/") {
			if seg != "" {
				segs = append(segs, seg)
			}
		}
		if strings.Join(segs, "/") != name {
			t.Fatalf("accepted %q as %q, not its segments %q", raw, name, segs)
		}
	})
}

// FuzzDecodeConfig: no config file crashes the loader.
func FuzzDecodeConfig(f *testing.F) {
	f.Add("listen: {socket: /tmp/s}\nstorage: {state: {backend: memory}, secrets: {backend: overlay, overlay: {store: memory, master_key: /tmp/k}}}\n")
	f.Add("bogus: 1\n")
	f.Add("storage: []\n")
	f.Fuzz(func(t *testing.T, y string) {
		DecodeConfig(strings.NewReader(y))
	})
}
