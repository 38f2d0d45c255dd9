package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/sealrun/sealrun/internal/logfmt"
	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/runner"
	"github.com/sealrun/sealrun/storage"
	storageconfig "github.com/sealrun/sealrun/storage/config"
)

func runRunner(ctx context.Context, s stdio, args []string) int {
	fs := newFlags(s, "runner --config FILE",
		`Consume sealed work from RabbitMQ queues and run it.

The runner loads its keys before consuming (and fails if they are missing),
verifies and opens each message, records it as a JobRecord in etcd, runs the
configured executor, publishes the sealed report to <queue>_response when that
queue exists, and acknowledges only when the outcome is recorded. Messages that
can never succeed are rejected once (dead-lettered with dead_letter:); transient
failures pause consumption and requeue. SIGTERM or SIGINT stops consuming, lets
running jobs finish within shutdown_grace, then kills and requeues them and
exits 0. Logs are JSON on stderr; see configs/runner.yaml for every option.`,
		`  sealrun runner --config /etc/sealrun/runner.yaml

  # health, readiness and Prometheus metrics (http.listen in the config)
  curl -s 127.0.0.1:9464/readyz`)
	cfgPath := fs.String("config", "", "runner configuration file (YAML)")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return usageError(s, fs, "unexpected argument %q", fs.Arg(0))
	}
	if *cfgPath == "" {
		return usageError(s, fs, "--config is required")
	}
	cfg, err := runner.LoadConfig(*cfgPath)
	if err != nil {
		return failure(s, fs, err)
	}
	log := logfmt.New(s.err, slog.LevelInfo).With("runner", cfg.RunnerID)
	sc := cfg.StorageConfig()
	if sc == nil {
		return failure(s, fs, errors.New("the runner needs a storage: section (JobRecords live in its state backend)"))
	}
	store, err := storageconfig.OpenWith(ctx, sc, storage.Options{Logger: log})
	if err != nil {
		return failure(s, fs, fmt.Errorf("open storage: %w", err))
	}
	defer store.Close()
	var keys runner.KeySource
	switch cfg.Keys.Source {
	case "dir":
		keys = &runner.DirKeySource{Dir: cfg.Keys.Dir, Poll: cfg.Keys.PollInterval}
	case "proxy":
		c, err := client.New(cfg.Keys.Proxy.ClientConfig())
		if err != nil {
			return failure(s, fs, fmt.Errorf("keys.proxy: %w", err))
		}
		defer c.Close()
		keys = &runner.ProxyKeySource{Client: c}
	default:
		return failure(s, fs, fmt.Errorf("keys.source %q is not supported by this build", cfg.Keys.Source))
	}
	r, err := runner.New(runner.Options{Config: cfg, Keys: keys, Store: store, Logger: log, Version: version})
	if err != nil {
		return failure(s, fs, err)
	}
	if cfg.HTTP.Listen != "" {
		ln, err := net.Listen("tcp", cfg.HTTP.Listen)
		if err != nil {
			return failure(s, fs, fmt.Errorf("http.listen: %w", err))
		}
		srv := &http.Server{Handler: r.Handler(), ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}
	nctx, stopNotify := context.WithCancel(ctx)
	defer stopNotify()
	go r.NotifySystemd(nctx)
	if err := r.Run(ctx); err != nil {
		return failure(s, fs, err)
	}
	return exitOK
}
