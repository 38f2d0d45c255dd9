package testenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RabbitMQBinDir is where Debian's rabbitmq-server package puts its scripts.
const RabbitMQBinDir = "/usr/lib/rabbitmq/bin"

// RabbitMQNode is a private RabbitMQ node on 127.0.0.1 with its own HOME,
// data dir, node name, AMQP/distribution ports and epmd, so it never clashes
// with another node on the machine. One node serves a whole test package;
// tests isolate themselves with unique queue names or vhosts.
type RabbitMQNode struct {
	// URL is the AMQP URL of the node (guest/guest, default vhost).
	URL string
	// Port is the AMQP listener port.
	Port int
	// ManagementURL is where the management HTTP API answers once
	// Management has enabled it; guest/guest logs in.
	ManagementURL string

	dir, node string
	env       []string
	mu        sync.Mutex
	server    *exec.Cmd
	exited    chan struct{}
	epmd      *exec.Cmd
	epmdDone  chan struct{}
	// management is set once the management plugin was enabled.
	management bool
}

var rabbit struct {
	sync.Mutex
	node *RabbitMQNode
	err  error
}

// RabbitMQ returns the package's shared RabbitMQ node, starting it on first
// use (10–40 s). Call StopRabbitMQ from TestMain after m.Run. A machine
// without rabbitmq-server fails the test: these tests are never skipped.
func RabbitMQ(t testing.TB) *RabbitMQNode {
	t.Helper()
	rabbit.Lock()
	defer rabbit.Unlock()
	if rabbit.node == nil && rabbit.err == nil {
		// Not t.Context(): the node outlives this test.
		rabbit.node, rabbit.err = startRabbitMQ(context.Background())
	}
	if rabbit.err != nil {
		t.Fatal(rabbit.err)
	}
	return rabbit.node
}

// StopRabbitMQ stops the shared node (rabbitmqctl stop, then epmd by PID)
// and the shared cluster (SharedRabbitCluster), those that were started.
// Call it from TestMain after m.Run (testenv.Main does).
func StopRabbitMQ() {
	rabbit.Lock()
	if rabbit.node != nil {
		rabbit.node.stop()
		rabbit.node = nil
	}
	rabbit.Unlock()
	stopSharedRabbitCluster()
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startRabbitMQ(ctx context.Context) (*RabbitMQNode, error) {
	epmdBin, err := rabbitBinaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "sealrun-rabbitmq-")
	if err != nil {
		return nil, err
	}
	epmdPort, err := freePort()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	n, err := newRabbitNode(dir, dir, "sealrun-test-"+hex.EncodeToString(b)+"@localhost", epmdPort)
	if err != nil {
		return nil, err
	}
	if n.epmd, n.epmdDone, err = startEpmd(epmdBin, epmdPort, n.env); err != nil {
		return nil, err
	}
	if err := n.startServer(ctx); err != nil {
		n.stop()
		return nil, err
	}
	return n, nil
}

// rabbitBinaries checks that rabbitmq-server is installed and returns the
// path of epmd.
func rabbitBinaries() (epmd string, err error) {
	server := filepath.Join(RabbitMQBinDir, "rabbitmq-server")
	if _, err := os.Stat(server); err != nil {
		return "", fmt.Errorf("rabbitmq-server is not installed (%v): run scripts/install-deps.sh", err)
	}
	epmd, err = exec.LookPath("epmd")
	if err != nil {
		return "", fmt.Errorf("epmd not found (part of rabbitmq-server's Erlang dependency): run scripts/install-deps.sh")
	}
	return epmd, nil
}

// newRabbitNode prepares (does not start) a node whose data, logs and
// configuration live in dir, with home as $HOME (where the Erlang cookie
// is: cluster members share one), its own free AMQP, distribution and
// management ports, and the epmd on epmdPort.
func newRabbitNode(dir, home, node string, epmdPort int) (*RabbitMQNode, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ports := make([]int, 3)
	var err error
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	n := &RabbitMQNode{dir: dir, node: node, Port: ports[0]}
	n.URL = fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", n.Port)
	n.ManagementURL = fmt.Sprintf("http://127.0.0.1:%d", ports[2])
	n.env = append(os.Environ(),
		"HOME="+home,
		"RABBITMQ_NODENAME="+n.node,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(ports[0]),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(ports[1]),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "rabbitmq.pid"),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"ERL_EPMD_PORT="+strconv.Itoa(epmdPort),
	)
	// No plugins at start: the management plugin costs broker CPU on every
	// message (statistics), which benchmarks would pay. Management turns it
	// on for the tests that need it.
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[].\n"), 0o644); err != nil {
		return nil, err
	}
	// Loopback guest access is what the tests log in with; the management
	// listener's address is fixed now so enabling the plugin later needs no
	// restart.
	conf := fmt.Sprintf("loopback_users = none\nmanagement.tcp.ip = 127.0.0.1\nmanagement.tcp.port = %d\n", ports[2])
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return n, nil
}

// startEpmd runs epmd in the foreground on port, so we hold its PID and
// stop exactly it; done closes when it exits.
func startEpmd(bin string, port int, env []string) (*exec.Cmd, chan struct{}, error) {
	cmd := exec.Command(bin, "-port", strconv.Itoa(port))
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start epmd: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	return cmd, done, nil
}

// startServer starts rabbitmq-server on the node's data dir and waits until
// it accepts work.
func (n *RabbitMQNode) startServer(ctx context.Context) error {
	logf, err := os.OpenFile(filepath.Join(n.dir, "server.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(RabbitMQBinDir, "rabbitmq-server"))
	cmd.Env = n.env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group so a kill reaches the script and the VM; dies with
	// the test binary even if the test is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start rabbitmq-server: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	n.mu.Lock()
	n.server, n.exited = cmd, exited
	n.mu.Unlock()
	// await_startup fails at once while the VM has not registered with
	// epmd yet, so poll it until the deadline.
	deadline := time.Now().Add(120 * time.Second)
	for {
		actx, cancel := context.WithTimeout(ctx, 60*time.Second)
		out, err := n.ctl(actx, "await_startup", "--timeout", "60")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("rabbitmq node %s exited during start-up (logs in %s)", n.node, n.dir)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rabbitmq node %s did not start in 120s: %v: %s (logs in %s)", n.node, err, out, n.dir)
		}
	}
}

func (n *RabbitMQNode) ctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(RabbitMQBinDir, "rabbitmqctl"), append([]string{"-n", n.node}, args...)...)
	cmd.Env = n.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

// Ctl runs rabbitmqctl against the node (for example "list_queues").
func (n *RabbitMQNode) Ctl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	out, err := n.ctl(ctx, args...)
	if err != nil {
		t.Fatalf("rabbitmqctl %v: %v: %s", args, err, out)
	}
	return out
}

// VHost creates a fresh vhost granting guest full rights and returns its
// AMQP URL, so a test has its own queues and exchanges.
func (n *RabbitMQNode) VHost(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	vh := "t-" + hex.EncodeToString(b)
	n.Ctl(t, "add_vhost", vh)
	n.Ctl(t, "set_permissions", "-p", vh, "guest", ".*", ".*", ".*")
	return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/%s", n.Port, vh)
}

// Kill9AndRestart kills the node's Erlang VM with SIGKILL and starts it again
// on the same data dir and ports: durable queues and persistent messages
// survive, connections do not.
func (n *RabbitMQNode) Kill9AndRestart(t testing.TB) {
	t.Helper()
	n.kill9()
	if err := n.startServer(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func (n *RabbitMQNode) kill9() {
	n.mu.Lock()
	cmd, exited := n.server, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	if b, err := os.ReadFile(filepath.Join(n.dir, "rabbitmq.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited
	_ = os.Remove(filepath.Join(n.dir, "rabbitmq.pid"))
}

func (n *RabbitMQNode) stop() {
	n.stopServer()
	if n.epmd != nil && n.epmd.Process != nil {
		_ = n.epmd.Process.Kill()
		<-n.epmdDone
	}
	_ = os.RemoveAll(n.dir)
}

// stopServer stops the node's VM: rabbitmqctl stop, SIGKILL if that fails.
func (n *RabbitMQNode) stopServer() {
	n.mu.Lock()
	cmd := n.server
	n.mu.Unlock()
	if cmd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := n.ctl(ctx, "stop")
		cancel()
		if err == nil {
			select {
			case <-n.exited:
			case <-time.After(30 * time.Second):
			}
		}
		n.kill9() // no-op once it has exited; the fallback when stop failed
	}
}

// Management enables the management plugin on the running node (once; it
// stays enabled across restarts) and returns its URL when it answers.
func (n *RabbitMQNode) Management(t testing.TB) string {
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.management {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(RabbitMQBinDir, "rabbitmq-plugins"), "-n", n.node, "enable", "--online", "rabbitmq_management")
		cmd.Env = n.env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("rabbitmq-plugins enable rabbitmq_management: %v: %s", err, out)
		}
		n.management = true
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(n.ManagementURL + "/api/overview")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusOK {
				return n.ManagementURL
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("management API not answering at %s after 60s: %v", n.ManagementURL, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
