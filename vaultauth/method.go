package vaultauth

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path"
	"strings"
	"sync"

	"github.com/hashicorp/vault/api"
)

// Auth selects and configures the login method.
type Auth struct {
	// Method is "token" (the default), "approle" or "kubernetes".
	Method string
	// TokenFile, for method token, is a file holding the token, as a Vault
	// Agent sink writes it; it is read again whenever the token must be
	// replaced. Empty means $VAULT_TOKEN (or $BAO_TOKEN).
	TokenFile string
	// AppRole configures method approle.
	AppRole *AppRole
	// Kubernetes configures method kubernetes.
	Kubernetes *Kubernetes
}

// AppRole logs in with a role id and a secret id read from files.
type AppRole struct {
	// Mount is where the auth method is enabled (default "approle").
	Mount string
	// RoleID is the role id; it identifies, the secret id authenticates.
	RoleID string
	// RoleIDFile holds the role id, when RoleID is empty.
	RoleIDFile string
	// SecretIDFile holds the secret id, or with SecretIDWrapped a
	// response-wrapping token whose unwrapped data holds it.
	SecretIDFile string
	// SecretIDWrapped says SecretIDFile holds a wrapping token. It is
	// unwrapped once (wrapping tokens are single-use) after checking it was
	// created by this role's secret-id endpoint; the secret id is then kept
	// in memory for later logins, until the file changes.
	SecretIDWrapped bool
}

// Kubernetes logs in with the pod's projected service-account token.
type Kubernetes struct {
	// Mount is where the auth method is enabled (default "kubernetes").
	Mount string
	// Role is the Vault role to log in as (required).
	Role string
	// TokenPath is the projected service-account token, read at every login
	// since the kubelet rotates it (default
	// /var/run/secrets/kubernetes.io/serviceaccount/token).
	TokenPath string
}

// DefaultKubernetesTokenPath is where Kubernetes mounts the service-account token.
const DefaultKubernetesTokenPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// Method obtains a token. Login returns a secret whose Auth is set.
type Method interface {
	// Name is the method's name for logs and metrics.
	Name() string
	// Login obtains a fresh token. It does not set it on client.
	Login(ctx context.Context, client *api.Client) (*api.Secret, error)
}

// NewMethod validates a and returns its Method.
func NewMethod(a Auth) (Method, error) {
	switch a.Method {
	case "", "token":
		if a.AppRole != nil || a.Kubernetes != nil {
			return nil, errors.New("vault auth: approle/kubernetes settings given but method is token; set auth.method")
		}
		return &tokenMethod{file: a.TokenFile}, nil
	case "approle":
		r := a.AppRole
		if r == nil || (r.RoleID == "") == (r.RoleIDFile == "") || r.SecretIDFile == "" {
			return nil, errors.New("vault auth approle: set one of role_id and role_id_file, and secret_id_file")
		}
		rc := *r
		rc.Mount = strings.Trim(firstOf(rc.Mount, "approle"), "/")
		return &appRoleMethod{cfg: rc}, nil
	case "kubernetes":
		k := a.Kubernetes
		if k == nil || k.Role == "" {
			return nil, errors.New("vault auth kubernetes: set kubernetes.role (the Vault role bound to this service account)")
		}
		kc := *k
		kc.Mount = strings.Trim(firstOf(kc.Mount, "kubernetes"), "/")
		kc.TokenPath = firstOf(kc.TokenPath, DefaultKubernetesTokenPath)
		return &kubernetesMethod{cfg: kc}, nil
	}
	return nil, fmt.Errorf("vault auth method %q: want token, approle or kubernetes", a.Method)
}

// readSecretFile reads a credential file, trimming the newline editors and
// Vault Agent add. Errors name the file, never its content.
func readSecretFile(what, name string) (string, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", what, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s %s is empty", what, name)
	}
	return s, nil
}

// tokenMethod uses a given token: from a file (re-read at every login, as
// Vault Agent rewrites its sink) or from the environment.
type tokenMethod struct{ file string }

func (m *tokenMethod) Name() string { return "token" }

func (m *tokenMethod) Login(ctx context.Context, client *api.Client) (*api.Secret, error) {
	var tok string
	if m.file != "" {
		var err error
		if tok, err = readSecretFile("vault token file", m.file); err != nil {
			return nil, err
		}
	} else if tok = env("TOKEN"); tok == "" {
		return nil, errors.New("vault token: no token (set auth.token_file to a Vault Agent sink, or VAULT_TOKEN)")
	}
	// Look the token up with a client of its own so the shared client's
	// token is untouched until the caller switches.
	c, err := anonymous(client)
	if err != nil {
		return nil, err
	}
	c.SetToken(tok)
	s, err := c.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("vault token: look up the token: %w", Explain(err))
	}
	ttl, _ := s.TokenTTL()
	renewable, _ := s.TokenIsRenewable()
	policies, _ := s.TokenPolicies()
	accessor, _ := s.TokenAccessor()
	// LifetimeWatcher renews secrets with Auth set; lookup-self returns
	// Data, so present it as a login would.
	s.Auth = &api.SecretAuth{ClientToken: tok, Accessor: accessor, Policies: policies,
		LeaseDuration: int(ttl.Seconds()), Renewable: renewable}
	return s, nil
}

// appRoleMethod logs in with a role id and secret id.
type appRoleMethod struct {
	cfg AppRole

	mu         sync.Mutex
	wrapDigest [32]byte // digest of the last wrapping token unwrapped
	secretID   string   // what it held
}

func (m *appRoleMethod) Name() string { return "approle" }

func (m *appRoleMethod) Login(ctx context.Context, client *api.Client) (*api.Secret, error) {
	roleID := m.cfg.RoleID
	if roleID == "" {
		var err error
		if roleID, err = readSecretFile("approle role id file", m.cfg.RoleIDFile); err != nil {
			return nil, fmt.Errorf("vault approle login: %w", err)
		}
	}
	secretID, err := m.secretIDFor(ctx, client)
	if err != nil {
		return nil, fmt.Errorf("vault approle login: %w", err)
	}
	c, err := anonymous(client)
	if err != nil {
		return nil, err
	}
	p := path.Join("auth", m.cfg.Mount, "login")
	s, err := c.Logical().WriteWithContext(ctx, p, map[string]any{"role_id": roleID, "secret_id": secretID})
	if err != nil {
		return nil, fmt.Errorf("vault approle login at %s: %w", p, Explain(err))
	}
	if s == nil || s.Auth == nil {
		return nil, fmt.Errorf("vault approle login at %s returned no token", p)
	}
	return s, nil
}

// secretIDFor reads the secret id, unwrapping it when configured.
func (m *appRoleMethod) secretIDFor(ctx context.Context, client *api.Client) (string, error) {
	raw, err := readSecretFile("approle secret id file", m.cfg.SecretIDFile)
	if err != nil || !m.cfg.SecretIDWrapped {
		return raw, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	digest := sha256.Sum256([]byte(raw))
	if m.secretID != "" && digest == m.wrapDigest {
		return m.secretID, nil // already unwrapped; the token is spent
	}
	c, err := anonymous(client)
	if err != nil {
		return "", err
	}
	// A wrapping token made elsewhere could unwrap to anything: accept only
	// one minted by an AppRole secret-id endpoint of this mount.
	look, err := c.Logical().WriteWithContext(ctx, "sys/wrapping/lookup", map[string]any{"token": raw})
	if err != nil {
		return "", fmt.Errorf("look up wrapped secret id from %s (expired or already used?): %w", m.cfg.SecretIDFile, Explain(err))
	}
	created, _ := look.Data["creation_path"].(string)
	if !strings.HasPrefix(created, "auth/"+m.cfg.Mount+"/role/") || !strings.HasSuffix(created, "/secret-id") {
		return "", fmt.Errorf("wrapped secret id in %s was created at %q, not by an AppRole secret-id endpoint of auth/%s: refusing it", m.cfg.SecretIDFile, created, m.cfg.Mount)
	}
	s, err := c.Logical().UnwrapWithContext(ctx, raw)
	if err != nil {
		return "", fmt.Errorf("unwrap secret id from %s (a wrapping token works once; was it used already?): %w", m.cfg.SecretIDFile, Explain(err))
	}
	id, _ := s.Data["secret_id"].(string)
	if id == "" {
		return "", fmt.Errorf("wrapped secret id in %s unwrapped to no secret_id", m.cfg.SecretIDFile)
	}
	m.wrapDigest, m.secretID = digest, id
	return id, nil
}

// kubernetesMethod logs in with the projected service-account JWT.
type kubernetesMethod struct{ cfg Kubernetes }

func (m *kubernetesMethod) Name() string { return "kubernetes" }

func (m *kubernetesMethod) Login(ctx context.Context, client *api.Client) (*api.Secret, error) {
	jwt, err := readSecretFile("kubernetes service-account token", m.cfg.TokenPath)
	if err != nil {
		return nil, fmt.Errorf("vault kubernetes login: %w", err)
	}
	c, err := anonymous(client)
	if err != nil {
		return nil, err
	}
	p := path.Join("auth", m.cfg.Mount, "login")
	s, err := c.Logical().WriteWithContext(ctx, p, map[string]any{"role": m.cfg.Role, "jwt": jwt})
	if err != nil {
		return nil, fmt.Errorf("vault kubernetes login as role %q at %s: %w", m.cfg.Role, p, Explain(err))
	}
	if s == nil || s.Auth == nil {
		return nil, fmt.Errorf("vault kubernetes login at %s returned no token", p)
	}
	return s, nil
}

// anonymous is client without its token (but with its namespace header):
// logins must not be refused because the token being replaced has expired,
// and the shared client's token must not change until the caller switches.
func anonymous(client *api.Client) (*api.Client, error) {
	c, err := client.CloneWithHeaders()
	if err != nil {
		return nil, fmt.Errorf("vault client: %w", err)
	}
	c.SetToken("")
	return c, nil
}
