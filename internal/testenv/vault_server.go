package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// VaultServer is a real Vault with file storage, initialised and unsealed
// as in production (one unseal key share), which a test can stop, start
// again on the same address with the same data, seal and unseal. Unlike a
// dev server, restarting it keeps tokens, mounts and secrets, and it comes
// back sealed.
type VaultServer struct {
	// Addr is the server's URL (http://127.0.0.1:port).
	Addr string
	// RootToken is the initial root token.
	RootToken string

	t         testing.TB
	bin, dir  string
	hostport  string
	unsealKey string
	cmd       *exec.Cmd
	exited    chan struct{}
}

// FileVault starts, initialises and unseals a file-backed Vault in a
// temporary directory. It is stopped when t ends.
func FileVault(t testing.TB) *VaultServer {
	t.Helper()
	bin, err := VaultBin()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	v := &VaultServer{t: t, bin: bin, dir: t.TempDir(), hostport: l.Addr().String()}
	l.Close()
	v.Addr = "http://" + v.hostport
	conf := fmt.Sprintf(`storage "file" { path = %q }
listener "tcp" {
  address     = %q
  tls_disable = true
}
disable_mlock = true
api_addr      = %q
`, filepath.Join(v.dir, "data"), v.hostport, v.Addr)
	if err := os.WriteFile(filepath.Join(v.dir, "vault.hcl"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Stop)
	v.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	init, err := v.client("").Sys().InitWithContext(ctx, &api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		t.Fatalf("vault operator init: %v", err)
	}
	v.unsealKey, v.RootToken = init.KeysB64[0], init.RootToken
	v.Unseal()
	return v
}

// Client returns a root client for setting the server up.
func (v *VaultServer) Client() *api.Client { return v.client(v.RootToken) }

func (v *VaultServer) client(token string) *api.Client {
	cfg := api.DefaultConfig()
	cfg.Address = v.Addr
	cfg.MaxRetries = 0
	c, err := api.NewClient(cfg)
	if err != nil {
		v.t.Fatal(err)
	}
	c.SetToken(token)
	return c
}

// Start runs the server process (sealed, once initialised) and waits until
// it answers. It fails the test if the address was taken meanwhile.
func (v *VaultServer) Start() {
	v.t.Helper()
	logf, err := os.Create(filepath.Join(v.dir, "vault.log"))
	if err != nil {
		v.t.Fatal(err)
	}
	defer logf.Close()
	v.cmd = exec.Command(v.bin, "server", "-config="+filepath.Join(v.dir, "vault.hcl"))
	v.cmd.Stdout, v.cmd.Stderr = logf, logf
	v.cmd.Env = append(os.Environ(), "VAULT_LOG_LEVEL=warn", "HOME="+v.dir)
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := v.cmd.Start(); err != nil {
		v.t.Fatalf("start %s: %v", v.bin, err)
	}
	v.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { _ = cmd.Wait(); close(exited) }(v.cmd, v.exited)
	c := v.client("")
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := c.Sys().HealthWithContext(ctx) // answers 200 sealed or not (api sets the *code params)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-v.exited:
			log, _ := os.ReadFile(logf.Name())
			v.t.Fatalf("vault server exited during start-up:\n%s", log)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			v.t.Fatalf("vault server not answering after 60s: %v", err)
		}
	}
}

// Stop kills the server (as a crash would) and waits for it to exit.
func (v *VaultServer) Stop() {
	if v.cmd == nil {
		return
	}
	_ = v.cmd.Process.Kill()
	<-v.exited
	v.cmd = nil
}

// Restart stops the server, starts it again and unseals it.
func (v *VaultServer) Restart() {
	v.t.Helper()
	v.Stop()
	v.Start()
	v.Unseal()
}

// Seal seals the running server: it then answers 503 to everything but
// status and unseal requests.
func (v *VaultServer) Seal() {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := v.Client().Sys().SealWithContext(ctx); err != nil {
		v.t.Fatalf("vault operator seal: %v", err)
	}
}

// Unseal unseals the running server with its one key share.
func (v *VaultServer) Unseal() {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := v.client("").Sys().UnsealWithContext(ctx, v.unsealKey)
	if err != nil || st.Sealed {
		v.t.Fatalf("vault operator unseal: %v (sealed: %v)", err, st != nil && st.Sealed)
	}
	// Unsealed is not yet active: wait until requests are served.
	c := v.Client()
	for range 300 {
		if _, err := c.Auth().Token().LookupSelfWithContext(ctx); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	v.t.Fatal("vault unsealed but not serving requests after 30s")
}
