// Package vaultauth connects sealrun to Vault (or OpenBao): it builds the API
// client from configuration and the standard VAULT_* / BAO_* environment,
// logs in with a token, AppRole or Kubernetes, keeps the token alive with
// vault/api's LifetimeWatcher (logging in again when it cannot), and turns
// Vault's terse 403 and 503 answers into errors an operator can act on.
package vaultauth

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/vault/api"
)

// Config is how to reach Vault and log in. Empty fields fall back to the
// standard environment variables (VAULT_ADDR, VAULT_NAMESPACE, VAULT_CACERT,
// VAULT_CAPATH, VAULT_CLIENT_CERT, VAULT_CLIENT_KEY, VAULT_TLS_SERVER_NAME,
// VAULT_SKIP_VERIFY, VAULT_TOKEN), each of which may be spelled BAO_* for
// OpenBao; the VAULT_ spelling wins when both are set.
type Config struct {
	// Address is Vault's URL, e.g. https://vault.example:8200.
	Address string
	// Namespace is the Vault Enterprise / OpenBao namespace, if any.
	Namespace string
	// CACert is a PEM bundle to verify Vault's certificate with.
	CACert string
	// ClientCert and ClientKey are PEM files for TLS client authentication.
	ClientCert string
	ClientKey  string
	// SkipVerify disables TLS verification. For tests only; it is logged
	// as a warning every time a client is built with it.
	SkipVerify bool
	// Timeout bounds each Vault request attempt (default 10s).
	Timeout time.Duration
	// MaxRetries is how often a request answered 429, 5xx (503 is what a
	// sealed or standby Vault answers) or not answered at all is retried,
	// with jittered backoff (default 3; -1 disables retries).
	MaxRetries int
	// Auth is how to obtain a token (default: token from VAULT_TOKEN).
	Auth Auth
}

// DefaultTimeout bounds a Vault request attempt when Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// env returns VAULT_<name>, else BAO_<name>.
func env(name string) string {
	if v := os.Getenv("VAULT_" + name); v != "" {
		return v
	}
	return os.Getenv("BAO_" + name)
}

func firstOf(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// NewClient builds an API client with no token set: the token comes from a
// Method (see Start). log receives the skip-verify warning; it may be nil.
func NewClient(c Config, log *slog.Logger) (*api.Client, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg := api.DefaultConfig() // also reads VAULT_*; overridden below
	if cfg.Error != nil {
		return nil, fmt.Errorf("vault client config from environment: %w", cfg.Error)
	}
	if addr := firstOf(c.Address, env("ADDR")); addr != "" {
		cfg.Address = addr
	}
	insecure := c.SkipVerify
	if v := env("SKIP_VERIFY"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, fmt.Errorf("VAULT_SKIP_VERIFY/BAO_SKIP_VERIFY %q: want true or false", v)
		}
		insecure = insecure || b
	}
	tc := api.TLSConfig{
		CACert:        firstOf(c.CACert, env("CACERT")),
		CAPath:        env("CAPATH"),
		ClientCert:    firstOf(c.ClientCert, env("CLIENT_CERT")),
		ClientKey:     firstOf(c.ClientKey, env("CLIENT_KEY")),
		TLSServerName: env("TLS_SERVER_NAME"),
		Insecure:      insecure,
	}
	if (tc.ClientCert == "") != (tc.ClientKey == "") {
		return nil, fmt.Errorf("vault TLS: client_cert and client_key (VAULT_CLIENT_CERT/KEY) must be set together")
	}
	if err := cfg.ConfigureTLS(&tc); err != nil {
		return nil, fmt.Errorf("vault TLS: %w", err)
	}
	if insecure {
		log.Warn("vault: TLS certificate verification is disabled (skip_verify or VAULT_SKIP_VERIFY); anyone on the network path can impersonate Vault and read every secret", "address", cfg.Address)
	}
	cfg.Timeout = c.Timeout
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	switch {
	case c.MaxRetries < 0:
		cfg.MaxRetries = 0
	case c.MaxRetries > 0:
		cfg.MaxRetries = c.MaxRetries
	default:
		cfg.MaxRetries = 3
	}
	// The default CheckRetry retries 429, 412 and 5xx but 501, and the default
	// backoff is jittered and honours Retry-After.
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vault client for %s: %w", cfg.Address, err)
	}
	client.SetToken("") // NewClient read VAULT_TOKEN; only the Method sets a token
	client.ClearNamespace()
	if ns := firstOf(c.Namespace, env("NAMESPACE")); ns != "" {
		client.SetNamespace(ns)
	}
	return client, nil
}
