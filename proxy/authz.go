package proxy

import (
	"slices"
	"strings"
)

// Verbs a credential can be granted. "list" and "watch" are reads of a
// container; they are granted separately so a runner may read its keys
// without enumerating everyone's.
var allVerbs = []string{"get", "put", "delete", "list", "watch", "create"}

// Grant is what one credential may do: Custodia's SimplePathAuthz, per
// credential. A path entry ending in "." matches exactly that path; any
// other entry matches the path and everything below it, on segment
// boundaries ("/secrets/a" matches "/secrets/a/b", never "/secrets/ab").
type Grant struct {
	Paths []string
	Verbs []string
}

// Allows reports whether verb on the request path (e.g. "/secrets/a/b" or
// "/secrets/a/" for a container) is granted.
func (g Grant) Allows(verb, path string) bool {
	if !slices.Contains(g.Verbs, verb) && !slices.Contains(g.Verbs, "*") {
		return false
	}
	for _, p := range g.Paths {
		if exact, ok := strings.CutSuffix(p, "."); ok {
			if path == exact || strings.TrimSuffix(path, "/") == strings.TrimSuffix(exact, "/") {
				return true
			}
			continue
		}
		base := strings.TrimSuffix(p, "/")
		if path == base || strings.HasPrefix(path, base+"/") {
			return true
		}
	}
	return false
}
