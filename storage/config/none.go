package config

import (
	"context"
	"errors"
	"fmt"

	"github.com/sealrun/sealrun/storage/driver"
)

// errNoSecretBackend is what every secret operation returns under
// secrets.backend none.
var errNoSecretBackend = errors.New("secrets.backend is none: this process holds no secrets (ask the secrets proxy)")

// noSecrets is the secret driver for secrets.backend none. It refuses every
// call, so a state-only component that reaches for a secret model fails
// loudly instead of writing it anywhere.
type noSecrets struct{}

func (noSecrets) Get(_ context.Context, key string) (driver.Entry, error) {
	return driver.Entry{}, fmt.Errorf("get %s: %w", key, errNoSecretBackend)
}

func (noSecrets) Put(_ context.Context, key string, _ []byte, _ driver.PutOptions) (int64, error) {
	return 0, fmt.Errorf("put %s: %w", key, errNoSecretBackend)
}

func (noSecrets) Delete(_ context.Context, key string, _ driver.DeleteOptions) error {
	return fmt.Errorf("delete %s: %w", key, errNoSecretBackend)
}

func (noSecrets) List(_ context.Context, prefix string) ([]string, error) {
	return nil, fmt.Errorf("list %s: %w", prefix, errNoSecretBackend)
}

func (noSecrets) Watch(_ context.Context, prefix string) (<-chan driver.Event, error) {
	return nil, fmt.Errorf("watch %s: %w", prefix, errNoSecretBackend)
}

func (noSecrets) ErrorCode(err error) driver.Code {
	if errors.Is(err, errNoSecretBackend) {
		return driver.PermissionDenied
	}
	return driver.CommonCode(err)
}

func (noSecrets) Close() error { return nil }
