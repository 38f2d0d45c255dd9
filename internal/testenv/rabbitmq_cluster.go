package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RabbitCluster is a real RabbitMQ cluster on loopback: one Debian
// rabbitmq-server VM per node (rabbit1@localhost, rabbit2@localhost, …),
// each with its own AMQP, distribution and management ports and its own
// RABBITMQ_MNESIA_BASE and RABBITMQ_LOG_BASE, sharing one private epmd and
// one Erlang cookie, joined with `rabbitmqctl join_cluster`. Nodes are
// separate OS processes, so Kill is a real crash: their clients see a dead
// socket, quorum queues elect a new leader on the others.
//
// Tests on a shared cluster (SharedRabbitCluster) isolate themselves with
// their own vhost (VHost); a test that kills a node gets it restarted when
// it ends, so the next test finds the whole cluster.
type RabbitCluster struct {
	// URLs are the nodes' AMQP URLs (guest/guest, default vhost), in node
	// order.
	URLs []string
	// Nodes are the members, in node order. Their Ctl, VHost and
	// Management work as on a lone node; do not call their
	// Kill9AndRestart (use Kill and Restart, which know the cluster).
	Nodes []*RabbitMQNode

	dir      string
	epmd     *exec.Cmd
	epmdDone chan struct{}
	// mu serialises Kill, Restart and Stop.
	mu sync.Mutex
}

// DeadLetterConfirmTimeout is the cluster nodes' at-least-once
// dead-lettering retry delay (RabbitMQ's
// dead_letter_worker_publisher_confirm_timeout; 3 min by default).
const DeadLetterConfirmTimeout = 10 * time.Second

// sharedRabbitCluster is the package-wide cluster SharedRabbitCluster
// starts; StopRabbitMQ stops it.
var sharedRabbitCluster struct {
	sync.Mutex
	c   *RabbitCluster
	err error
}

// SharedRabbitCluster returns the package's 3-node cluster, starting it on
// first use; StopRabbitMQ (from TestMain after m.Run, or testenv.Main)
// stops it. Every test of the package shares it, isolated by VHost; after
// each test, nodes it killed are restarted and the cluster is back to 3
// running nodes. A machine without rabbitmq-server fails the test.
func SharedRabbitCluster(t testing.TB) *RabbitCluster {
	t.Helper()
	sharedRabbitCluster.Lock()
	defer sharedRabbitCluster.Unlock()
	if sharedRabbitCluster.c == nil && sharedRabbitCluster.err == nil {
		// Not t.Context(): the cluster outlives this test.
		sharedRabbitCluster.c, sharedRabbitCluster.err = startRabbitCluster(context.Background(), 3)
	}
	if sharedRabbitCluster.err != nil {
		t.Fatal(sharedRabbitCluster.err)
	}
	c := sharedRabbitCluster.c
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := c.restartStopped(ctx); err != nil {
			t.Errorf("restore the shared RabbitMQ cluster: %v", err)
		}
	})
	return c
}

func stopSharedRabbitCluster() {
	sharedRabbitCluster.Lock()
	defer sharedRabbitCluster.Unlock()
	if sharedRabbitCluster.c != nil {
		sharedRabbitCluster.c.Stop()
		sharedRabbitCluster.c = nil
	}
	sharedRabbitCluster.err = nil
}

// StartRabbitCluster starts an n-node cluster for t alone, stopped when t
// ends. Prefer SharedRabbitCluster: a cluster takes tens of seconds to
// start on a small machine.
func StartRabbitCluster(t testing.TB, n int) *RabbitCluster {
	t.Helper()
	c, err := startRabbitCluster(t.Context(), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

func startRabbitCluster(ctx context.Context, n int) (*RabbitCluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("a RabbitMQ cluster needs at least one node, not %d", n)
	}
	epmdBin, err := rabbitBinaries()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "sealrun-rabbit-cluster-")
	if err != nil {
		return nil, err
	}
	c := &RabbitCluster{dir: dir}
	// One cookie for every node and for rabbitmqctl, written before any
	// node starts: nodes starting at once would otherwise each create one.
	cookie := make([]byte, 16)
	_, _ = rand.Read(cookie)
	if err := os.WriteFile(filepath.Join(dir, ".erlang.cookie"), []byte(strings.ToUpper(hex.EncodeToString(cookie))), 0o400); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	epmdPort, err := freePort()
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	for i := range n {
		name := fmt.Sprintf("rabbit%d", i+1)
		node, err := newRabbitNode(filepath.Join(dir, name), dir, name+"@localhost", epmdPort)
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		// A quorum queue dead-letters at-least-once through a worker that
		// re-sends what the target queue did not confirm only after
		// dead_letter_worker_publisher_confirm_timeout (3 min by default):
		// a message dead-lettered as the target's leader dies waits that
		// long. Tests cannot wait that long; docs/scale.md tells operators
		// the same knob.
		adv := filepath.Join(node.dir, "advanced.config")
		if err := os.WriteFile(adv, []byte(fmt.Sprintf("[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, %d}]}].\n",
			DeadLetterConfirmTimeout.Milliseconds())), 0o644); err != nil {
			_ = os.RemoveAll(dir)
			return nil, err
		}
		node.env = append(node.env, "RABBITMQ_ADVANCED_CONFIG_FILE="+adv)
		c.Nodes = append(c.Nodes, node)
		c.URLs = append(c.URLs, node.URL)
	}
	// Node names only need to be unique per epmd: this private one makes
	// rabbit1@localhost safe beside other clusters on the machine.
	if c.epmd, c.epmdDone, err = startEpmd(epmdBin, epmdPort, c.Nodes[0].env); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	// The VMs boot in parallel (the slow part); the joins are sequential,
	// as each one changes the cluster's schema.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, node := range c.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = node.startServer(ctx) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.Stop()
		return nil, err
	}
	// Each rabbitmqctl call costs a second or two of CLI start-up: the
	// members stop and start their apps at once; only the joins, which
	// change the cluster's schema, go one by one.
	seed, joiners := c.Nodes[0].node, c.Nodes[1:]
	if err := eachNode(ctx, joiners, "stop_app"); err != nil {
		c.Stop()
		return nil, err
	}
	for _, node := range joiners {
		if err := eachNode(ctx, []*RabbitMQNode{node}, "join_cluster", seed); err != nil {
			c.Stop()
			return nil, err
		}
	}
	if err := eachNode(ctx, joiners, "start_app"); err != nil {
		c.Stop()
		return nil, err
	}
	if err := c.awaitRunning(ctx, 0); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

// eachNode runs rabbitmqctl args against every node in nodes at once.
func eachNode(ctx context.Context, nodes []*RabbitMQNode, args ...string) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, node := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			defer cancel()
			if out, err := node.ctl(actx, args...); err != nil {
				errs[i] = fmt.Errorf("rabbitmqctl -n %s %s: %v: %s (logs in %s)", node.node, strings.Join(args, " "), err, out, node.dir)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// NodeName is node i's Erlang node name (rabbit<i+1>@localhost), as
// cluster_status and list_queues' leader column report it.
func (c *RabbitCluster) NodeName(i int) string { return c.Nodes[i].node }

// NodeIndex returns the index of the node named name (-1 if none).
func (c *RabbitCluster) NodeIndex(name string) int {
	for i, n := range c.Nodes {
		if n.node == name {
			return i
		}
	}
	return -1
}

// VHost creates a fresh vhost (cluster-wide, guest granted full rights)
// and returns its AMQP URL on every node, in node order.
func (c *RabbitCluster) VHost(t testing.TB) []string {
	t.Helper()
	i := c.liveNode()
	if i < 0 {
		t.Fatal("no RabbitMQ cluster node is running")
	}
	u := c.Nodes[i].VHost(t)
	vh := u[strings.LastIndex(u, "/")+1:]
	urls := make([]string, len(c.Nodes))
	for j, n := range c.Nodes {
		urls[j] = fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/%s", n.Port, vh)
	}
	return urls
}

// Ctl runs rabbitmqctl against a running node (cluster-wide commands such
// as list_queues answer the same on each).
func (c *RabbitCluster) Ctl(t testing.TB, args ...string) string {
	t.Helper()
	i := c.liveNode()
	if i < 0 {
		t.Fatal("no RabbitMQ cluster node is running")
	}
	return c.Nodes[i].Ctl(t, args...)
}

// Running reports whether node i's VM is running (it was not killed, or it
// was restarted).
func (c *RabbitCluster) Running(i int) bool {
	n := c.Nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.server == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

func (c *RabbitCluster) liveNode() int {
	for i := range c.Nodes {
		if c.Running(i) {
			return i
		}
	}
	return -1
}

// Kill SIGKILLs node i's VM and returns once it is gone: its connections
// drop without a close, and the cluster sees the node down. Restart brings
// it back.
func (c *RabbitCluster) Kill(i int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.Nodes[i].kill9()
}

// Restart starts killed node i again on its data dir and ports and waits
// until it has rejoined: the cluster reports every node running. Its
// durable quorum queue replicas catch up from the leaders.
func (c *RabbitCluster) Restart(ctx context.Context, i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.Nodes[i].startServer(ctx); err != nil {
		return err
	}
	return c.awaitRunning(ctx, i)
}

// restartStopped restarts every killed node and waits for all of them.
func (c *RabbitCluster) restartStopped(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, n := range c.Nodes {
		if !c.Running(i) {
			if err := n.startServer(ctx); err != nil {
				return err
			}
		}
	}
	return c.awaitRunning(ctx, 0)
}

// awaitRunning waits, asking node i, until the cluster reports all its
// nodes running (rabbitmqctl await_online_nodes: the broker's own ready
// signal), then checks cluster_status agrees.
func (c *RabbitCluster) awaitRunning(ctx context.Context, i int) error {
	n := c.Nodes[i]
	actx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if out, err := n.ctl(actx, "await_online_nodes", strconv.Itoa(len(c.Nodes)), "--timeout", "120"); err != nil {
		return fmt.Errorf("RabbitMQ cluster: %d nodes not online: %v: %s (logs in %s)", len(c.Nodes), err, out, c.dir)
	}
	running, err := c.runningNodes(actx, i)
	if err != nil {
		return err
	}
	if len(running) != len(c.Nodes) {
		return fmt.Errorf("RabbitMQ cluster: running nodes %v after await_online_nodes %d", running, len(c.Nodes))
	}
	return nil
}

// RunningNodes returns the node names the cluster reports running, asked
// of a running node.
func (c *RabbitCluster) RunningNodes(ctx context.Context) ([]string, error) {
	i := c.liveNode()
	if i < 0 {
		return nil, errors.New("no RabbitMQ cluster node is running")
	}
	return c.runningNodes(ctx, i)
}

func (c *RabbitCluster) runningNodes(ctx context.Context, i int) ([]string, error) {
	out, err := c.Nodes[i].ctl(ctx, "cluster_status", "--formatter", "json")
	if err != nil {
		return nil, fmt.Errorf("rabbitmqctl cluster_status: %v: %s", err, out)
	}
	var st struct {
		RunningNodes []string `json:"running_nodes"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("rabbitmqctl cluster_status: %v: %s", err, out)
	}
	slices.Sort(st.RunningNodes)
	return st.RunningNodes, nil
}

// QueueLeader returns the index of the node leading quorum queue name in
// vhost (for a classic queue: the node holding it).
func (c *RabbitCluster) QueueLeader(t testing.TB, vhost, name string) int {
	t.Helper()
	out := c.Ctl(t, "list_queues", "-p", vhost, "name", "leader", "--formatter", "json")
	var qs []struct {
		Name   string `json:"name"`
		Leader string `json:"leader"`
	}
	if err := json.Unmarshal([]byte(out), &qs); err != nil {
		t.Fatalf("list_queues: %v: %s", err, out)
	}
	for _, q := range qs {
		if q.Name == name {
			if i := c.NodeIndex(q.Leader); i >= 0 {
				return i
			}
			t.Fatalf("queue %s/%s: leader %q is no node of the cluster", vhost, name, q.Leader)
		}
	}
	t.Fatalf("queue %s/%s not found: %s", vhost, name, out)
	return -1
}

// ConnectedNodes returns, for the client connections open in vhost, the
// index of the node each is connected to (sorted), so a test can kill the
// node a process under test is using.
func (c *RabbitCluster) ConnectedNodes(t testing.TB, vhost string) []int {
	t.Helper()
	out := c.Ctl(t, "list_connections", "vhost", "port", "--formatter", "json")
	var cs []struct {
		VHost string `json:"vhost"`
		Port  int    `json:"port"`
	}
	if err := json.Unmarshal([]byte(out), &cs); err != nil {
		t.Fatalf("list_connections: %v: %s", err, out)
	}
	var idx []int
	for _, conn := range cs {
		if conn.VHost != vhost {
			continue
		}
		for i, n := range c.Nodes {
			if n.Port == conn.Port {
				idx = append(idx, i)
			}
		}
	}
	slices.Sort(idx)
	return idx
}

// Stop stops every node (rabbitmqctl stop, SIGKILL if that fails), then
// epmd, and removes the data.
func (c *RabbitCluster) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Add(1)
		go func() { defer wg.Done(); n.stopServer() }()
	}
	wg.Wait()
	if c.epmd != nil && c.epmd.Process != nil {
		_ = c.epmd.Process.Kill()
		<-c.epmdDone
	}
	_ = os.RemoveAll(c.dir)
}
