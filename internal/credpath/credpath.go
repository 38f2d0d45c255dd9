// Package credpath expands ${CREDENTIALS_DIRECTORY} in configured file paths,
// so a config file can name the files systemd's LoadCredential= places in a
// private, per-service directory (not in the environment, not world-readable)
// without knowing where systemd mounts it.
//
// It is the one place sealrun reads that variable: every config loader
// passes its path fields (key, token, password, TLS files) through
// ExpandFields while decoding.
package credpath

import (
	"fmt"
	"os"
	"strings"
)

// Var is the environment variable systemd sets for units with
// LoadCredential= or SetCredential=.
const Var = "CREDENTIALS_DIRECTORY"

// Ref is how a config path refers to it, e.g. "${CREDENTIALS_DIRECTORY}/master.key".
const Ref = "${" + Var + "}"

// Field is one configured path, named as the user wrote it in the file
// ("secrets.overlay.master_key") so errors point at the line to fix.
type Field struct {
	Name string
	Path *string
}

// ExpandFields expands every field in place with Expand; nil Path pointers
// and empty paths are skipped (the section or option is not in use).
func ExpandFields(fields ...Field) error {
	for _, f := range fields {
		if f.Path == nil || *f.Path == "" {
			continue
		}
		p, err := Expand(*f.Path)
		if err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		*f.Path = p
	}
	return nil
}

// Expand replaces ${CREDENTIALS_DIRECTORY} in path with the variable's value.
// Nothing else is expanded, and any other "$" is an error rather than a
// literal: a path such as "$HOME/key" that silently stayed unexpanded would
// only fail later, far from its cause. A reference while the variable is
// unset is an error for the same reason (outside its unit, set it by hand to
// check the file: CREDENTIALS_DIRECTORY=/tmp/creds sealrun config check F).
func Expand(path string) (string, error) {
	return expand(path, os.LookupEnv)
}

func expand(path string, lookup func(string) (string, bool)) (string, error) {
	rest := strings.ReplaceAll(path, Ref, "")
	if strings.Contains(rest, "$") {
		return "", fmt.Errorf("%q: only %s is expanded in paths", path, Ref)
	}
	if rest == path {
		return path, nil
	}
	dir, ok := lookup(Var)
	if !ok || dir == "" {
		return "", fmt.Errorf("%q: %s is not set (systemd sets it for units with LoadCredential=)", path, Var)
	}
	return strings.ReplaceAll(path, Ref, strings.TrimRight(dir, "/")), nil
}
