package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// VaultVersion is the Vault release scripts/install-vault.sh builds.
const VaultVersion = "v1.19.0"

// VaultBin finds the Vault binary: $SEALRUN_VAULT_BIN, then the cache
// scripts/install-vault.sh fills, then PATH.
func VaultBin() (string, error) {
	if p := os.Getenv("SEALRUN_VAULT_BIN"); p != "" {
		return p, nil
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache")
	}
	p := filepath.Join(cache, "sealrun", "vault-"+VaultVersion, "vault")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if p, err := exec.LookPath("vault"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("no Vault binary: run scripts/install-vault.sh (or set SEALRUN_VAULT_BIN)")
}

type vaultServer struct {
	addr, token string
	cmd         *exec.Cmd
	stopFn      func()
}

// stop kills the server by its PID and waits for it to exit.
func (s *vaultServer) stop() { s.stopFn() }

// shared is the package-wide Vault started by Main's first Vault call.
var shared struct {
	sync.Mutex
	inMain bool
	srv    *vaultServer
	err    error
}

// Main runs a test package's tests and then stops the Vault dev server, the
// etcd cluster and the RabbitMQ node and cluster its tests shared. Use it as
// TestMain in packages that call Vault:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
func Main(m *testing.M) {
	shared.Lock()
	shared.inMain = true
	shared.Unlock()
	code := m.Run()
	shared.Lock()
	if shared.srv != nil {
		shared.srv.stop()
	}
	shared.Unlock()
	stopSharedEtcd()
	StopRabbitMQ()
	os.Exit(code)
}

// Vault returns the address and root token of a real Vault dev server on
// 127.0.0.1 (in-memory, unsealed, KV v2 at "secret/"). Under Main one server
// is shared by the package; otherwise each test gets its own. Tests isolate
// themselves with their own key prefixes. A missing binary fails the test:
// Vault tests are never skipped.
func Vault(t testing.TB) (addr, token string) {
	t.Helper()
	shared.Lock()
	defer shared.Unlock()
	if !shared.inMain {
		srv, err := startVault(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(srv.stop)
		return srv.addr, srv.token
	}
	if shared.srv == nil && shared.err == nil {
		// Not t.Context(): the server outlives this test.
		shared.srv, shared.err = startVault(context.Background())
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.srv.addr, shared.srv.token
}

func startVault(ctx context.Context) (*vaultServer, error) {
	bin, err := VaultBin()
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 { // the free port can be taken between probe and bind
		srv, err := tryStartVault(ctx, bin)
		if err == nil {
			return srv, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func tryStartVault(ctx context.Context, bin string) (*vaultServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	hostport := l.Addr().String()
	l.Close()
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	srv := &vaultServer{addr: "http://" + hostport, token: "test-" + hex.EncodeToString(b)}
	logf, err := os.CreateTemp("", "sealrun-vault-*.log")
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	srv.cmd = exec.Command(bin, "server", "-dev", "-dev-root-token-id="+srv.token, "-dev-listen-address="+hostport)
	srv.cmd.Stdout, srv.cmd.Stderr = logf, logf
	srv.cmd.Env = append(os.Environ(), "VAULT_LOG_LEVEL=warn", "HOME="+os.TempDir())
	// Dies with the test binary even if the test is killed.
	srv.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := srv.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = srv.cmd.Wait(); close(exited) }()
	cfg := api.DefaultConfig()
	cfg.Address = srv.addr
	client, err := api.NewClient(cfg)
	if err != nil {
		srv.kill(exited)
		return nil, err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		h, err := client.Sys().HealthWithContext(hctx)
		cancel()
		if err == nil && h.Initialized && !h.Sealed {
			os.Remove(logf.Name())
			srv.stopFn = func() { srv.kill(exited) }
			return srv, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("vault server exited during start-up; log: %s", logf.Name())
		case <-ctx.Done():
			srv.kill(exited)
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			srv.kill(exited)
			return nil, fmt.Errorf("vault server not healthy after 60s (last error: %v); log: %s", err, logf.Name())
		}
	}
}

func (s *vaultServer) kill(exited <-chan struct{}) {
	_ = s.cmd.Process.Kill()
	<-exited
}
