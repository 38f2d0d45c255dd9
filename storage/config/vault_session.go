package config

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/hashicorp/vault/api"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sealrun/sealrun/vaultauth"
)

// connectVault builds a client for secrets.vault (address, else VAULT_ADDR /
// BAO_ADDR; TLS and namespace from VAULT_* / BAO_*), logs in with its auth
// method and returns the Session that keeps the token alive: the caller
// owns it and closes it.
func connectVault(ctx context.Context, v *Vault, reg prometheus.Registerer) (*api.Client, *vaultauth.Session, error) {
	m, err := vaultMethod(v)
	if err != nil {
		return nil, nil, fmt.Errorf("secrets.vault: %w", err)
	}
	// slog.Default: storage.Options carries no logger, and renewal trouble
	// and a disabled TLS check must reach the operator.
	client, err := vaultauth.NewClient(vaultauth.Config{Address: v.Address}, slog.Default())
	if err != nil {
		return nil, nil, fmt.Errorf("secrets.vault: %w", err)
	}
	s, err := vaultauth.Start(ctx, client, m, vaultauth.Options{Metrics: reg, Logger: slog.Default()})
	if err != nil {
		return nil, nil, fmt.Errorf("secrets.vault at %s: %w", client.Address(), err)
	}
	return client, s, nil
}

// vaultMethod maps secrets.vault's auth settings to a vaultauth.Method.
func vaultMethod(v *Vault) (vaultauth.Method, error) {
	a := v.Auth
	if a == nil || a.Method == "token" {
		return vaultauth.NewMethod(vaultauth.Auth{Method: "token", TokenFile: v.TokenFile})
	}
	switch a.Method {
	case "approle":
		return vaultauth.NewMethod(vaultauth.Auth{Method: "approle", AppRole: &vaultauth.AppRole{
			Mount: a.Mount, RoleID: a.RoleID, SecretIDFile: a.SecretIDFile, SecretIDWrapped: a.SecretIDWrapped}})
	case "kubernetes":
		return vaultauth.NewMethod(vaultauth.Auth{Method: "kubernetes", Kubernetes: &vaultauth.Kubernetes{
			Mount: a.Mount, Role: a.Role, TokenPath: a.JWTFile}})
	}
	return vaultauth.NewMethod(vaultauth.Auth{Method: a.Method})
}
