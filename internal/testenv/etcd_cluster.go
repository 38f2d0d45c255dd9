package testenv

import (
	"bytes"
	"context"
	"errors"
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

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdCluster is a real multi-member etcd cluster: one etcd server process
// per member (the binary scripts/install-etcd.sh builds, the same version
// embedded etcd links), on loopback ports, each with its own data dir.
// Members are separate processes so that killing one is a real crash: its
// clients see a dead socket and the others elect a new leader.
//
// Tests on a shared cluster (SharedEtcdCluster) isolate themselves with
// their own key prefixes; a test that kills a member gets it restarted when
// it ends, so the next test finds the whole cluster.
type EtcdCluster struct {
	// Endpoints are the members' client URLs, in member order.
	Endpoints []string

	bin     string
	dir     string
	mu      sync.Mutex
	members []*etcdMember
}

type etcdMember struct {
	name, dir string
	clientURL string
	peerURL   string
	id        uint64 // raft member id, known once it has answered
	cmd       *exec.Cmd
	exited    chan struct{}
}

// EtcdBin finds the etcd server binary: $SEALRUN_ETCD_BIN, else what
// scripts/install-etcd.sh prints: the cached build of go.mod's etcd
// version, built first if absent (once, ~3 minutes on a fresh machine).
func EtcdBin() (string, error) {
	if p := os.Getenv("SEALRUN_ETCD_BIN"); p != "" {
		return p, nil
	}
	etcdBin.Do(func() {
		script, err := repoFile("scripts/install-etcd.sh")
		if err != nil {
			etcdBin.err = fmt.Errorf("find scripts/install-etcd.sh: %w (or set SEALRUN_ETCD_BIN)", err)
			return
		}
		var stderr bytes.Buffer
		cmd := exec.Command("bash", script)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			etcdBin.err = fmt.Errorf("%s: %v\n%s", script, err, stderr.String())
			return
		}
		etcdBin.path = strings.TrimSpace(string(out))
	})
	return etcdBin.path, etcdBin.err
}

var etcdBin struct {
	sync.Once
	path string
	err  error
}

// repoFile finds rel in the repository the tests run in (the directory
// holding go.mod, above the package's directory).
func repoFile(rel string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, rel)
			if _, err := os.Stat(p); err != nil {
				return "", err
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// sharedEtcd is the package-wide cluster SharedEtcdCluster starts; Main
// stops it.
var sharedEtcd struct {
	sync.Mutex
	c   *EtcdCluster
	err error
}

// SharedEtcdCluster returns the package's 3-member cluster, starting it on
// first use. Under Main it is shared by every test of the package and
// stopped after them (starting one costs a few seconds); otherwise each
// test gets its own. A missing binary is built, never skipped.
func SharedEtcdCluster(t testing.TB) *EtcdCluster {
	t.Helper()
	shared.Lock()
	inMain := shared.inMain
	shared.Unlock()
	if !inMain {
		return StartEtcdCluster(t, 3)
	}
	sharedEtcd.Lock()
	defer sharedEtcd.Unlock()
	if sharedEtcd.c == nil && sharedEtcd.err == nil {
		sharedEtcd.c, sharedEtcd.err = startEtcdCluster(3)
	}
	if sharedEtcd.err != nil {
		t.Fatal(sharedEtcd.err)
	}
	c := sharedEtcd.c
	// Whatever the test does to members, the next one finds all of them.
	t.Cleanup(func() {
		if err := c.startStopped(); err != nil {
			t.Errorf("restore the shared etcd cluster: %v", err)
		}
	})
	return c
}

func stopSharedEtcd() {
	sharedEtcd.Lock()
	defer sharedEtcd.Unlock()
	if sharedEtcd.c != nil {
		sharedEtcd.c.Stop()
		sharedEtcd.c = nil
	}
}

// StartEtcdCluster starts an n-member cluster for t alone, stopped when t
// ends.
func StartEtcdCluster(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	c, err := startEtcdCluster(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

func startEtcdCluster(n int) (*EtcdCluster, error) {
	bin, err := EtcdBin()
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 { // a free port can be taken between probe and bind
		c, err := tryStartEtcdCluster(bin, n)
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func tryStartEtcdCluster(bin string, n int) (*EtcdCluster, error) {
	dir, err := os.MkdirTemp("", "sealrun-etcd-cluster-*")
	if err != nil {
		return nil, err
	}
	// All ports are held at once, so no two members get the same one.
	ls := make([]net.Listener, 2*n)
	for i := range ls {
		if ls[i], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, err
		}
	}
	c := &EtcdCluster{bin: bin, dir: dir}
	for i := range n {
		m := &etcdMember{
			name:      fmt.Sprintf("m%d", i),
			dir:       filepath.Join(dir, fmt.Sprintf("m%d", i)),
			clientURL: "http://" + ls[2*i].Addr().String(),
			peerURL:   "http://" + ls[2*i+1].Addr().String(),
		}
		c.members = append(c.members, m)
		c.Endpoints = append(c.Endpoints, m.clientURL)
	}
	for _, l := range ls {
		l.Close()
	}
	for i := range c.members {
		if err := c.spawn(i); err != nil {
			c.Stop()
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range c.members {
		if err := c.waitMember(ctx, i); err != nil {
			c.Stop()
			return nil, err
		}
	}
	return c, nil
}

func (c *EtcdCluster) initialCluster() string {
	var parts []string
	for _, m := range c.members {
		parts = append(parts, m.name+"="+m.peerURL)
	}
	return strings.Join(parts, ",")
}

// spawn starts member i's process (it must not be running).
func (c *EtcdCluster) spawn(i int) error {
	m := c.members[i]
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(m.dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := []string{
		"--name", m.name,
		"--data-dir", filepath.Join(m.dir, "data"),
		"--listen-client-urls", m.clientURL, "--advertise-client-urls", m.clientURL,
		"--listen-peer-urls", m.peerURL, "--initial-advertise-peer-urls", m.peerURL,
		"--initial-cluster", c.initialCluster(),
		"--initial-cluster-token", filepath.Base(c.dir),
		// A restarted member rejoins from its data dir; "new" is only read
		// when the data dir is empty.
		"--initial-cluster-state", "new",
		// As embedded etcd: a 1 MiB secret, encrypted and base64'd, fits.
		"--max-request-bytes", fmt.Sprint(4 << 20),
		"--log-level", "warn",
	}
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Dies with the test binary even if the test is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start etcd member %s: %w", m.name, err)
	}
	m.cmd, m.exited = cmd, make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) { _ = cmd.Wait(); close(exited) }(cmd, m.exited)
	return nil
}

// waitMember waits until member i answers and knows a leader.
func (c *EtcdCluster) waitMember(ctx context.Context, i int) error {
	m := c.members[i]
	cli, err := c.dial(m.clientURL)
	if err != nil {
		return err
	}
	defer cli.Close()
	var last error
	for {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := cli.Status(sctx, m.clientURL)
		cancel()
		if err == nil && st.Leader != 0 {
			c.mu.Lock()
			m.id = st.Header.MemberId
			c.mu.Unlock()
			return nil
		}
		if err == nil {
			err = errors.New("no leader yet")
		}
		last = err
		select {
		case <-m.exited:
			log, _ := os.ReadFile(filepath.Join(m.dir, "etcd.log"))
			return fmt.Errorf("etcd member %s exited during start-up:\n%s", m.name, tail(log, 4000))
		case <-ctx.Done():
			return fmt.Errorf("etcd member %s not ready: %v (last: %v); log in %s", m.name, ctx.Err(), last, m.dir)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (c *EtcdCluster) dial(endpoints ...string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:          endpoints,
		DialTimeout:        5 * time.Second,
		Logger:             zap.NewNop(),
		MaxCallSendMsgSize: 8 << 20,
	})
}

// Client returns a client of every member (it fails over between them, as
// a sealrun process configured with all endpoints does), closed when t ends.
func (c *EtcdCluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return c.ClientOf(t, c.Endpoints...)
}

// ClientOf returns a client of the given endpoints only, closed when t ends.
func (c *EtcdCluster) ClientOf(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	cli, err := c.dial(endpoints...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// Kill SIGKILLs member i and waits for the process to be gone.
func (c *EtcdCluster) Kill(i int) {
	c.mu.Lock()
	m := c.members[i]
	cmd, exited := m.cmd, m.exited
	m.cmd = nil
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// Running says whether member i's process is up.
func (c *EtcdCluster) Running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i].cmd != nil
}

// Restart starts killed member i again on its data dir and ports, and waits
// until it has rejoined (answers and knows a leader).
func (c *EtcdCluster) Restart(ctx context.Context, i int) error {
	c.mu.Lock()
	running := c.members[i].cmd != nil
	c.mu.Unlock()
	if running {
		return fmt.Errorf("etcd member %d is running", i)
	}
	c.mu.Lock()
	err := c.spawn(i)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	return c.waitMember(ctx, i)
}

// startStopped restarts every killed member.
func (c *EtcdCluster) startStopped() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range c.members {
		if !c.Running(i) {
			if err := c.Restart(ctx, i); err != nil {
				return err
			}
		}
	}
	_, err := c.WaitLeader(ctx)
	return err
}

// Stop kills every member and removes the cluster's data.
func (c *EtcdCluster) Stop() {
	for i := range c.members {
		c.Kill(i)
	}
	_ = os.RemoveAll(c.dir)
}

// Leader returns the index of the member that says it leads, or -1 if no
// running member does right now.
func (c *EtcdCluster) Leader(ctx context.Context) int {
	for i, m := range c.members {
		if !c.Running(i) {
			continue
		}
		cli, err := c.dial(m.clientURL)
		if err != nil {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := cli.Status(sctx, m.clientURL)
		cancel()
		cli.Close()
		if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
			return i
		}
	}
	return -1
}

// WaitLeader waits until a running member leads and returns its index.
func (c *EtcdCluster) WaitLeader(ctx context.Context) (int, error) {
	for {
		if l := c.Leader(ctx); l >= 0 {
			return l, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("no etcd leader: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// KillLeader kills the current leader and returns its index.
func (c *EtcdCluster) KillLeader(ctx context.Context) (int, error) {
	l, err := c.WaitLeader(ctx)
	if err != nil {
		return -1, err
	}
	c.Kill(l)
	return l, nil
}

// MoveLeader hands leadership to member to (a graceful transfer, as
// `etcdctl move-leader` does) and waits until it leads.
func (c *EtcdCluster) MoveLeader(ctx context.Context, to int) error {
	l, err := c.WaitLeader(ctx)
	if err != nil {
		return err
	}
	if l == to {
		return nil
	}
	c.mu.Lock()
	id := c.members[to].id
	leaderURL := c.members[l].clientURL
	c.mu.Unlock()
	cli, err := c.dial(leaderURL)
	if err != nil {
		return err
	}
	defer cli.Close()
	if _, err := cli.MoveLeader(ctx, id); err != nil {
		return fmt.Errorf("move etcd leader from member %d to %d: %w", l, to, err)
	}
	for {
		if c.Leader(ctx) == to {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("member %d not leading after move: %w", to, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
