package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

// VaultCluster is a real Vault HA cluster on integrated (raft) storage: one
// server process per node on loopback, initialised with one unseal key
// share, every node unsealed and a raft voter, KV v2 mounted at "secret/".
// One node is active; the others are standbys that forward requests to it.
// Killing the active node is a real crash: the others elect a new leader.
type VaultCluster struct {
	// Addrs are the nodes' API URLs, in node order.
	Addrs []string
	// RootToken is the initial root token.
	RootToken string

	t         testing.TB
	bin, dir  string
	unsealKey string
	mu        sync.Mutex
	nodes     []*vaultNode
}

type vaultNode struct {
	id, dir string
	cmd     *exec.Cmd
	exited  chan struct{}
}

// VaultRaftCluster starts an n-node cluster for t, stopped when t ends.
func VaultRaftCluster(t testing.TB, n int) *VaultCluster {
	t.Helper()
	bin, err := VaultBin()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ls := make([]net.Listener, 2*n) // held at once: all distinct
	for i := range ls {
		if ls[i], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	c := &VaultCluster{t: t, bin: bin, dir: dir}
	api0 := "http://" + ls[0].Addr().String()
	for i := range n {
		apiHP, clusterHP := ls[2*i].Addr().String(), ls[2*i+1].Addr().String()
		nd := &vaultNode{id: fmt.Sprintf("n%d", i), dir: filepath.Join(dir, fmt.Sprintf("n%d", i))}
		if err := os.MkdirAll(filepath.Join(nd.dir, "raft"), 0o700); err != nil {
			t.Fatal(err)
		}
		join := ""
		if i > 0 {
			join = fmt.Sprintf("  retry_join { leader_api_addr = %q }\n", api0)
		}
		conf := fmt.Sprintf(`storage "raft" {
  path    = %q
  node_id = %q
  # Production raft timings (the default, 0, is five times slower).
  performance_multiplier = 1
  # Raft refuses entries over 1 MiB by default; a 1 MiB secret is ~1.4 MB
  # as KV v2 JSON. Operators must raise it the same way (docs/scale.md).
  max_entry_size = 4194304
%s}
listener "tcp" {
  address         = %q
  cluster_address = %q
  tls_disable     = true
}
api_addr      = "http://%s"
cluster_addr  = "https://%s"
disable_mlock = true
`, filepath.Join(nd.dir, "raft"), nd.id, join, apiHP, clusterHP, apiHP, clusterHP)
		if err := os.WriteFile(filepath.Join(nd.dir, "vault.hcl"), []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		c.nodes = append(c.nodes, nd)
		c.Addrs = append(c.Addrs, "http://"+apiHP)
	}
	for _, l := range ls {
		l.Close()
	}
	t.Cleanup(c.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c.start(ctx, 0)
	init, err := c.client(0, "").Sys().InitWithContext(ctx, &api.InitRequest{SecretShares: 1, SecretThreshold: 1})
	if err != nil {
		t.Fatalf("vault operator init: %v", err)
	}
	c.unsealKey, c.RootToken = init.KeysB64[0], init.RootToken
	c.unseal(ctx, 0)
	c.waitActive(ctx, 0)
	root := c.client(0, c.RootToken)
	// Joined nodes vote once healthy for the stabilization time (10s by
	// default); a second keeps the cluster start short.
	if _, err := root.Logical().WriteWithContext(ctx, "sys/storage/raft/autopilot/configuration",
		map[string]any{"server_stabilization_time": "1s"}); err != nil {
		t.Fatalf("vault autopilot configuration: %v", err)
	}
	if err := root.Sys().MountWithContext(ctx, "secret", &api.MountInput{Type: "kv", Options: map[string]string{"version": "2"}}); err != nil {
		t.Fatalf("mount kv v2: %v", err)
	}
	for i := 1; i < n; i++ {
		c.start(ctx, i)
		c.unseal(ctx, i) // retried until the node has joined through retry_join
	}
	c.waitVoters(ctx, n)
	for i := range n {
		c.waitKnowsActive(ctx, i)
	}
	return c
}

// waitKnowsActive waits until node i is active or a standby that knows the
// active node (so it can forward to it).
func (c *VaultCluster) waitKnowsActive(ctx context.Context, i int) {
	c.t.Helper()
	cl := c.client(i, "")
	c.poll(ctx, i, "following an active node", func() bool {
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		l, err := cl.Sys().LeaderWithContext(lctx)
		return err == nil && (l.IsSelf || l.LeaderAddress != "")
	})
}

func (c *VaultCluster) client(i int, token string) *api.Client {
	cfg := api.DefaultConfig()
	cfg.Address = c.Addrs[i]
	cfg.MaxRetries = 0
	cl, err := api.NewClient(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	cl.SetToken(token)
	return cl
}

// Client returns a root client of node i.
func (c *VaultCluster) Client(i int) *api.Client { return c.client(i, c.RootToken) }

// start runs node i's process and waits until it answers (sealed or not).
func (c *VaultCluster) start(ctx context.Context, i int) {
	c.t.Helper()
	nd := c.nodes[i]
	logf, err := os.OpenFile(filepath.Join(nd.dir, "vault.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(c.bin, "server", "-config="+filepath.Join(nd.dir, "vault.hcl"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "VAULT_LOG_LEVEL=warn", "HOME="+nd.dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start vault node %s: %v", nd.id, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	c.mu.Lock()
	nd.cmd, nd.exited = cmd, exited
	c.mu.Unlock()
	cl := c.client(i, "")
	c.poll(ctx, i, "answering", func() bool {
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := cl.Sys().SealStatusWithContext(hctx)
		return err == nil
	})
}

// poll retries cond every 100ms until it holds, failing the test with
// node i's log if the node exits or ctx ends first.
func (c *VaultCluster) poll(ctx context.Context, i int, what string, cond func() bool) {
	c.t.Helper()
	nd := c.nodes[i]
	c.mu.Lock()
	exited := nd.exited
	c.mu.Unlock()
	for !cond() {
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(nd.dir, "vault.log"))
			c.t.Fatalf("vault node %s exited waiting until %s:\n%s", nd.id, what, tail(log, 4000))
		case <-ctx.Done():
			log, _ := os.ReadFile(filepath.Join(nd.dir, "vault.log"))
			c.t.Fatalf("vault node %s not %s: %v\n%s", nd.id, what, ctx.Err(), tail(log, 4000))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// unseal unseals node i, retrying while it is still joining.
func (c *VaultCluster) unseal(ctx context.Context, i int) {
	c.t.Helper()
	cl := c.client(i, "")
	c.poll(ctx, i, "unsealed", func() bool {
		uctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := cl.Sys().UnsealWithContext(uctx, c.unsealKey)
		return err == nil && !st.Sealed
	})
}

func (c *VaultCluster) waitActive(ctx context.Context, i int) {
	c.t.Helper()
	cl := c.client(i, "")
	c.poll(ctx, i, "active", func() bool {
		l, err := cl.Sys().LeaderWithContext(ctx)
		return err == nil && l.IsSelf
	})
}

// waitVoters waits until the raft configuration has n voters.
func (c *VaultCluster) waitVoters(ctx context.Context, n int) {
	c.t.Helper()
	a, err := c.WaitActive(ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	root := c.Client(a)
	c.poll(ctx, a, fmt.Sprintf("leading %d raft voters", n), func() bool {
		s, err := root.Logical().ReadWithContext(ctx, "sys/storage/raft/configuration")
		if err != nil || s == nil {
			return false
		}
		cfg, _ := s.Data["config"].(map[string]any)
		servers, _ := cfg["servers"].([]any)
		voters := 0
		for _, sv := range servers {
			if m, _ := sv.(map[string]any); m != nil && m["voter"] == true {
				voters++
			}
		}
		return voters == n
	})
}

// Running says whether node i's process is up.
func (c *VaultCluster) Running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].cmd != nil
}

// Active returns the index of the node that says it is active, or -1.
func (c *VaultCluster) Active(ctx context.Context) int {
	for i := range c.nodes {
		if !c.Running(i) {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, time.Second)
		l, err := c.client(i, "").Sys().LeaderWithContext(lctx)
		cancel()
		if err == nil && l.IsSelf {
			return i
		}
	}
	return -1
}

// WaitActive waits until a running node is active and returns its index.
func (c *VaultCluster) WaitActive(ctx context.Context) (int, error) {
	for {
		if a := c.Active(ctx); a >= 0 {
			return a, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("no active vault node: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Kill SIGKILLs node i and waits for it to be gone.
func (c *VaultCluster) Kill(i int) {
	c.mu.Lock()
	nd := c.nodes[i]
	cmd, exited := nd.cmd, nd.exited
	nd.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// Restart starts killed node i again on its data and unseals it.
func (c *VaultCluster) Restart(ctx context.Context, i int) {
	c.t.Helper()
	if c.Running(i) {
		c.t.Fatalf("vault node %d is running", i)
	}
	c.start(ctx, i)
	c.unseal(ctx, i)
	c.waitKnowsActive(ctx, i)
}

// Stop kills every node.
func (c *VaultCluster) Stop() {
	for i := range c.nodes {
		c.Kill(i)
	}
}

// String names the nodes, for logs.
func (c *VaultCluster) String() string { return "vault raft cluster " + strings.Join(c.Addrs, ",") }
