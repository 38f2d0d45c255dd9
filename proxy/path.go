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

// errNoSuchPath is a 404, answered after authentication: a "." or ".."
// segment. Custodia looks such a name up literally and finds nothing; the
// proxy never resolves it (no traversal) and never looks it up.
var errNoSuchPath = errors.New(`no such secret or container ("." and ".." segments name nothing)`)

// errNotServed is a 403, answered after authentication: a path outside
// /secrets/, which Custodia's path authorization refuses.
var errNotServed = errors.New("only / and /secrets/... are served")

// cleanSecretPath checks the raw (still percent-encoded) request path and
// returns the name under /secrets/ and whether it names a container (trailing
// slash). Refused with errBadPath, before authentication: NUL and control
// bytes, backslashes, percent-encoded slashes, backslashes, dots or NULs
// (Custodia decodes "%2F" into the name while its path authorization checks
// the encoded path, so an encoded slash crosses an authz boundary), invalid
// UTF-8 and over-long paths. A path outside /secrets/ is errNotServed. Empty segments ("c//x") collapse, as Custodia
// joins them away; authorization sees the collapsed name, so nothing is
// aliased past it. "." and ".." segments are errNoSuchPath.
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
		return "", false, errNotServed
	}
	container = rest == "" || strings.HasSuffix(rest, "/")
	var segs []string
	dots := false
	for _, seg := range strings.Split(rest, "/") {
		switch seg {
		case "":
			continue
		case ".", "..":
			dots = true
		}
		segs = append(segs, seg)
	}
	if dots {
		return "", false, errNoSuchPath // after the checks above: those come first
	}
	return strings.Join(segs, "/"), container || len(segs) == 0, nil
}
