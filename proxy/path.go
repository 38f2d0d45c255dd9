package proxy

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxPathLen bounds request paths before any backend sees them.
const MaxPathLen = 1024

// errBadPath is a 400: the path is refused before authorization or storage.
var errBadPath = errors.New("bad path")

// cleanSecretPath checks the raw (still percent-encoded) request path and
// returns the name under /secrets/ and whether it names a container (trailing
// slash). Custodia's etcd client silently truncated names at '?' or '#'
// (aliasing two names to one value); we refuse anything ambiguous instead:
// "..", ".", empty segments ("//"), NUL and control bytes, percent-encoded
// slashes or dots, invalid UTF-8 and over-long paths.
func cleanSecretPath(rawPath, decoded string) (name string, container bool, err error) {
	bad := func(why string) (string, bool, error) { return "", false, fmt.Errorf("%w: %s", errBadPath, why) }
	if len(rawPath) > MaxPathLen || len(decoded) > MaxPathLen {
		return bad(fmt.Sprintf("longer than %d bytes", MaxPathLen))
	}
	lower := strings.ToLower(rawPath)
	for _, enc := range []string{"%2f", "%5c", "%2e", "%00"} {
		if strings.Contains(lower, enc) {
			return bad("percent-encoded slash, backslash, dot or NUL")
		}
	}
	if !utf8.ValidString(decoded) {
		return bad("not valid UTF-8")
	}
	for _, r := range decoded {
		if r < 0x20 || r == 0x7f || r == '\\' {
			return bad("control character or backslash")
		}
	}
	rest, ok := strings.CutPrefix(decoded, "/secrets/")
	if !ok {
		if decoded == "/secrets" {
			return "", true, nil
		}
		return bad("not under /secrets/")
	}
	if rest == "" {
		return "", true, nil // the root container
	}
	container = strings.HasSuffix(rest, "/")
	body := strings.TrimSuffix(rest, "/")
	for _, seg := range strings.Split(body, "/") {
		switch seg {
		case "":
			return bad("empty path segment (//)")
		case ".", "..":
			return bad(`"." or ".." segment`)
		}
	}
	return body, container, nil
}
