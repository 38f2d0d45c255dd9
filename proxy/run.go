package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/sealrun/sealrun/proxy/audit"
	"github.com/sealrun/sealrun/storage"
	storageconfig "github.com/sealrun/sealrun/storage/config"
	"github.com/sealrun/sealrun/storage/driver"
)

// Run serves the proxy described by c until ctx ends, then shuts down
// gracefully (in-flight requests get 10s). ready, if set, is called once
// every listener accepts connections.
func Run(ctx context.Context, c *Config, log *slog.Logger, ready func(socket string)) error {
	reg := NewMetricsRegistry()
	store, err := storageconfig.OpenWith(ctx, c.StorageConfig(), storageOptions(reg, log))
	if err != nil {
		return fmt.Errorf("open storage: %w", err)
	}
	defer store.Close()
	al, err := audit.OpenWith(c.AuditLog, audit.Options{Sync: c.Audit.Sync})
	if err != nil {
		return err
	}
	defer al.Close()
	creds := NewCredentials(store)
	o := c.Options()
	o.Store, o.Credentials, o.Audit, o.Metrics, o.Logger = store, creds, al, reg, log
	srv, err := NewServer(o)
	if err != nil {
		return err
	}

	listeners, err := c.listeners()
	if err != nil {
		return err
	}
	var servers []*http.Server
	var wg sync.WaitGroup
	errc := make(chan error, len(listeners)+1)
	serve := func(hs *http.Server, ln net.Listener) {
		servers = append(servers, hs)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	for _, ln := range listeners {
		serve(srv.HTTPServer(), ln)
	}
	if c.OpsListen != "" {
		ln, err := net.Listen("tcp", c.OpsListen)
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("ops listener: %w", err)
		}
		serve(&http.Server{Handler: OpsHandler(store, reg), ReadHeaderTimeout: 5 * time.Second}, ln)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go creds.WatchRevocations(wctx)
	go srv.WatchValues(wctx)

	go watchdog(wctx, store, log)
	log.Info("secrets proxy serving", "socket", c.Listen.Socket, "tcp", c.Listen.TCP != nil, "ops", c.OpsListen, "audit_log", c.AuditLog, "audit_sync", c.Audit.Sync, "value_cache", o.ValueCache)
	daemon.SdNotify(false, daemon.SdNotifyReady)
	if ready != nil {
		ready(c.Listen.Socket)
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for _, hs := range servers {
		hs.Shutdown(sctx) // watch streams end with their request contexts
	}
	wg.Wait()
	return runErr
}

// listeners returns the API listeners: systemd-activated sockets when
// LISTEN_FDS is set, else the configured unix socket; then the TLS port.
func (c *Config) listeners() ([]net.Listener, error) {
	ls, err := activation.Listeners()
	if err != nil || len(ls) == 0 {
		mode, err := c.SocketMode()
		if err != nil {
			return nil, err
		}
		unix, err := ListenUnix(c.Listen.Socket, mode, c.Listen.SocketGroup)
		if err != nil {
			return nil, err
		}
		ls = []net.Listener{unix}
	}
	return c.withTCP(ls)
}

// withTCP completes the unix listeners in ls (systemd's or our own) with
// listen.tcp: a TCP socket systemd passed is served only with its TLS and
// client certificates (never plain HTTP), and without one listen.tcp gets
// its own port rather than being dropped.
func (c *Config) withTCP(ls []net.Listener) ([]net.Listener, error) {
	closeAll := func() {
		for _, l := range ls {
			if l != nil {
				l.Close()
			}
		}
	}
	t := c.Listen.TCP
	var cfg *tls.Config
	if t != nil {
		var err error
		if cfg, err = serverTLS(t); err != nil {
			closeAll()
			return nil, err
		}
	}
	out := make([]net.Listener, 0, len(ls)+1)
	sawTCP := false
	for _, l := range ls {
		if l == nil {
			continue // a passed descriptor that is not a listening socket
		}
		if _, ok := l.Addr().(*net.UnixAddr); ok {
			out = append(out, l)
			continue
		}
		if cfg == nil {
			closeAll()
			return nil, fmt.Errorf("systemd passed the non-unix socket %s, but listen.tcp (certificate, key, client CA) is not configured: sealrun serves TCP only over TLS with client certificates", l.Addr())
		}
		sawTCP = true
		out = append(out, tls.NewListener(l, cfg))
	}
	if t != nil && !sawTCP {
		ln, err := tls.Listen("tcp", t.Address, cfg)
		if err != nil {
			closeAll()
			return nil, err
		}
		out = append(out, ln)
	}
	return out, nil
}

func serverTLS(t *TCP) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("listen.tcp certificate: %w", err)
	}
	caPEM, err := os.ReadFile(t.ClientCAFile)
	if err != nil {
		return nil, fmt.Errorf("listen.tcp client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("listen.tcp client CA %s holds no PEM certificate", t.ClientCAFile)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}, nil
}

// watchdog pings systemd's watchdog (WatchdogSec=) at half its interval
// while the secret backend answers; a wedged backend connection stops the
// pings and systemd restarts the proxy.
func watchdog(ctx context.Context, store Store, log *slog.Logger) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		return
	}
	tick := time.NewTicker(interval / 2)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pctx, cancel := context.WithTimeout(ctx, interval/4)
		_, err := store.Get(pctx, &Container{Path: "sealrun-readiness-probe"})
		cancel()
		if c := storage.Code(err); c == driver.OK || c == driver.NotFound {
			daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		} else {
			log.Warn("secret backend not answering; withholding the watchdog ping", "code", c.String())
		}
	}
}
