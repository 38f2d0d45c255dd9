// Package embedded runs a single-node etcd server in-process: sealrun's
// default when no etcd endpoints are configured, and what tests use. It lives
// apart from the etcd driver so binaries that only talk to external etcd do
// not link the server.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config says where the server keeps its data.
type Config struct {
	// DataDir holds the member's data; created 0700 if absent.
	DataDir string
	// StartTimeout bounds waiting for the server to be ready (default 30s).
	StartTimeout time.Duration
	// Logger gets etcd's warnings and errors; nil discards them.
	Logger *slog.Logger
}

// Server is a running embedded etcd.
type Server struct {
	etcd      *embed.Etcd
	lock      *os.File
	closeOnce sync.Once
}

// Start starts etcd with loopback listeners on free ports and waits until it
// serves. Only one Server may use a DataDir at a time (etcd locks it).
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("embedded etcd: data_dir is required")
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded etcd: create data dir: %w", err)
	}
	// etcd's own lock on its database blocks forever when the directory is
	// in use, so a second sealrun (a CLI next to a running proxy) would hang.
	// Take a non-blocking lock first and fail at once with what to do.
	lock, err := lockDir(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	ec := embed.NewConfig()
	ec.Dir = cfg.DataDir
	// Port 0: the kernel picks free ports, so parallel servers never clash.
	// The peer URL is never dialled by a single-node cluster.
	loop := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{loop}, []url.URL{loop}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{loop}, []url.URL{loop}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zapToSlog(cfg.Logger))
	// A 1 MiB secret grows by a third once encrypted and base64'd.
	ec.MaxRequestBytes = 4 << 20
	e, err := embed.StartEtcd(ec)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("embedded etcd in %s: %w", cfg.DataDir, err)
	}
	timer := time.NewTimer(cfg.StartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
		return &Server{etcd: e, lock: lock}, nil
	case err := <-e.Err():
		e.Close()
		lock.Close()
		return nil, fmt.Errorf("embedded etcd in %s: %w", cfg.DataDir, err)
	case <-timer.C:
		e.Close()
		lock.Close()
		return nil, fmt.Errorf("embedded etcd in %s: not ready after %v", cfg.DataDir, cfg.StartTimeout)
	case <-ctx.Done():
		e.Close()
		lock.Close()
		return nil, fmt.Errorf("embedded etcd in %s: %w", cfg.DataDir, ctx.Err())
	}
}

// Endpoint is the client URL the server listens on.
func (s *Server) Endpoint() string { return "http://" + s.etcd.Clients[0].Addr().String() }

// Client dials the server over loopback, as an external client would.
func (s *Server) Client() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:          []string{s.Endpoint()},
		DialTimeout:        5 * time.Second,
		Logger:             zap.NewNop(),
		MaxCallSendMsgSize: 8 << 20,
	})
}

// Close stops the server; later calls do nothing.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.etcd.Close()
		s.lock.Close()
	})
	return nil
}

// lockDir takes an exclusive, non-blocking flock on <dir>/sealrun.lock. The
// kernel drops it when the process dies, so a crash leaves nothing stale.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "sealrun.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("embedded etcd data_dir %s is in use by another sealrun process; stop it, "+
				"or reach its data through it (sealrun secrets ... --socket for a running proxy)", dir)
		}
		return nil, fmt.Errorf("embedded etcd: lock %s: %w", dir, err)
	}
	return f, nil
}
