package config

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/sealrun/sealrun/storage"
	"github.com/sealrun/sealrun/storage/custodia"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/etcd"
	"github.com/sealrun/sealrun/storage/etcd/embedded"
	"github.com/sealrun/sealrun/storage/memory"
	"github.com/sealrun/sealrun/storage/overlay"
	"github.com/sealrun/sealrun/storage/vault"
)

// Open connects the backends c names and returns a Service owning them;
// closing the Service closes clients and any embedded etcd. metrics may be nil.
func Open(ctx context.Context, c *Config, metrics prometheus.Registerer) (*storage.Service, error) {
	return OpenWith(ctx, c, storage.Options{Metrics: metrics})
}

// OpenWith is Open with service options (a model registry beyond the
// defaults, metrics); Timeout and Closers are set from c.
func OpenWith(ctx context.Context, c *Config, opts storage.Options) (_ *storage.Service, err error) {
	var closers []io.Closer
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				_ = closers[i].Close()
			}
		}
	}()
	var client *clientv3.Client
	var state driver.Driver
	switch c.State.Backend {
	case "etcd":
		var cl []io.Closer
		client, cl, err = openEtcd(ctx, c.State.Etcd, opts.Logger)
		closers = append(closers, cl...)
		if err != nil {
			return nil, err
		}
		state = etcd.New(client, c.State.Etcd.Prefix)
		opts.Timeout = c.State.Etcd.Timeout
	default:
		state = memory.New()
	}
	var secret driver.Driver
	switch c.Secrets.Backend {
	case "overlay":
		o := c.Secrets.Overlay
		if o.Transit != nil {
			if secret, err = openTransitOverlay(ctx, c, client, opts.Metrics); err != nil {
				return nil, err
			}
			break
		}
		ring, err := loadRing(ctx, o, client)
		if err != nil {
			return nil, err
		}
		prot, _ := overlay.ParseProtection(o.Protection) // validated
		var under, custodiaUnder driver.Driver = memory.New(), memory.New()
		if o.Store == "etcd" {
			under = etcd.New(client, o.Prefix)
			custodiaUnder = etcd.New(client, custodia.Prefix(o.CustodiaNamespace))
		}
		secret = overlay.New(under, ring, prot)
		opts.Custodia = custodia.New(custodiaUnder, ring, prot)
	case "vault":
		v := c.Secrets.Vault
		vc, session, err := connectVault(ctx, v, opts.Metrics)
		if err != nil {
			return nil, err
		}
		closers = append(closers, session)
		secret = vault.New(vc, vault.Options{Mount: v.Mount, Prefix: v.Prefix, PollInterval: v.PollInterval})
	case "none":
		secret = noSecrets{}
	}
	opts.Closers = reverse(closers)
	return storage.New(secret, state, opts)
}

// openEtcd dials the configured cluster, or starts the embedded one (its
// warnings and errors to log, if not nil). The closers are in start order.
func openEtcd(ctx context.Context, e *Etcd, log *slog.Logger) (*clientv3.Client, []io.Closer, error) {
	var closers []io.Closer
	cfg := clientv3.Config{Endpoints: e.Endpoints, DialTimeout: e.DialTimeout, Logger: zap.NewNop(),
		MaxCallSendMsgSize: 8 << 20}
	if len(e.Endpoints) == 0 {
		srv, err := embedded.Start(ctx, embedded.Config{DataDir: e.DataDir, Logger: log})
		if err != nil {
			return nil, nil, fmt.Errorf("state.etcd: %w (is another sealrun using this data_dir?)", err)
		}
		closers = append(closers, srv)
		cfg.Endpoints = []string{srv.Endpoint()}
	}
	if t := e.TLS; t != nil {
		tc, err := transport.TLSInfo{TrustedCAFile: t.CAFile, CertFile: t.CertFile, KeyFile: t.KeyFile}.ClientConfig()
		if err != nil {
			return nil, closers, fmt.Errorf("state.etcd.tls: %w", err)
		}
		cfg.TLS = tc
	}
	if e.Username != "" {
		pw, err := os.ReadFile(e.PasswordFile)
		if err != nil {
			return nil, closers, fmt.Errorf("state.etcd.password_file: %w", err)
		}
		cfg.Username, cfg.Password = e.Username, strings.TrimSpace(string(pw))
	}
	client, err := clientv3.New(cfg)
	if err != nil {
		return nil, closers, fmt.Errorf("state.etcd: connect to %v: %w", cfg.Endpoints, err)
	}
	return client, append(closers, client), nil
}

func reverse(cs []io.Closer) []io.Closer {
	out := make([]io.Closer, len(cs))
	for i, c := range cs {
		out[len(cs)-1-i] = c
	}
	return out
}
