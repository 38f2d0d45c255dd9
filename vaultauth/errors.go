package vaultauth

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/hashicorp/vault/api"
)

// PermissionError is Vault's 403, explained: which request was refused and
// which policy capability on which path would allow it.
type PermissionError struct {
	// Method is the HTTP method (GET, PUT, POST, LIST, DELETE).
	Method string
	// Path is the API path below /v1/, as a policy names it.
	Path string
	// Capability is the policy capability the request needs.
	Capability string
	err        *api.ResponseError
}

func (e *PermissionError) Error() string {
	said := vaultSaid(e.err)
	if strings.HasSuffix(e.Path, "/login") {
		return fmt.Sprintf("vault refused the login at %s: credentials rejected (Vault said: %s)", e.Path, said)
	}
	if strings.Contains(said, "invalid token") {
		return fmt.Sprintf("vault denied %s %s: the token is invalid, expired or revoked (Vault said: %s)", e.Method, e.Path, said)
	}
	want := fmt.Sprintf("%q", e.Capability)
	if e.Capability == "update" {
		want = `"update" (or "create" if the path does not exist yet)`
	}
	return fmt.Sprintf("vault denied %s %s: the token's policies lack the %s capability on path %q, or the token is invalid or expired; grant it with the policy in deploy/vault/ (Vault said: %s)",
		e.Method, e.Path, want, e.Path, said)
}

// Unwrap returns the *api.ResponseError.
func (e *PermissionError) Unwrap() error { return e.err }

// UnavailableError is a 503: Vault is sealed, a standby that cannot serve,
// or not ready. Retrying later helps; the client already retried.
type UnavailableError struct {
	// Sealed is set when Vault said it is sealed.
	Sealed bool
	err    *api.ResponseError
}

func (e *UnavailableError) Error() string {
	host := e.err.URL
	if u, err := url.Parse(e.err.URL); err == nil {
		host = u.Scheme + "://" + u.Host
	}
	if e.Sealed {
		return fmt.Sprintf("vault at %s is sealed (503): unseal it (vault operator unseal) and sealrun will carry on; %s %s was retried and failed", host, e.err.HTTPMethod, apiPath(e.err.URL))
	}
	return fmt.Sprintf("vault at %s is unavailable (503: %s) for %s %s, after retries", host, vaultSaid(e.err), e.err.HTTPMethod, apiPath(e.err.URL))
}

// Unwrap returns the *api.ResponseError.
func (e *UnavailableError) Unwrap() error { return e.err }

// Explain turns a 403 into a *PermissionError and a 503 into an
// *UnavailableError (both still unwrap to the *api.ResponseError); other
// errors pass through unchanged.
func Explain(err error) error {
	var re *api.ResponseError
	if !errors.As(err, &re) {
		return err
	}
	switch re.StatusCode {
	case http.StatusForbidden:
		return &PermissionError{Method: method(re), Path: apiPath(re.URL), Capability: capability(re), err: re}
	case http.StatusServiceUnavailable:
		sealed := false
		for _, m := range re.Errors {
			sealed = sealed || strings.Contains(strings.ToLower(m), "sealed")
		}
		return &UnavailableError{Sealed: sealed, err: re}
	}
	return err
}

// apiPath is a request URL's path as policies name it: below /v1/, no query.
func apiPath(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	return strings.TrimPrefix(u.Path, "/v1/")
}

func method(re *api.ResponseError) string {
	if u, err := url.Parse(re.URL); err == nil && u.Query().Get("list") == "true" {
		return "LIST"
	}
	return re.HTTPMethod
}

// capability maps an HTTP method to the policy capability it needs.
func capability(re *api.ResponseError) string {
	switch method(re) {
	case http.MethodGet, http.MethodHead:
		return "read"
	case "LIST":
		return "list"
	case http.MethodDelete:
		return "delete"
	case http.MethodPatch:
		return "patch"
	}
	return "update" // PUT and POST: "create" when the path is new
}

// vaultSaid flattens Vault's error list ("2 errors occurred:\n\t* a\n\t* b")
// to one line: "a; b".
func vaultSaid(re *api.ResponseError) string {
	var parts []string
	for _, m := range re.Errors {
		for _, line := range strings.Split(m, "\n") {
			line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "*"))
			if line == "" || strings.HasSuffix(line, "errors occurred:") || strings.HasSuffix(line, "error occurred:") {
				continue
			}
			parts = append(parts, line)
		}
	}
	return strings.Join(parts, "; ")
}
