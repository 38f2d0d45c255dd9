//go:build chaos

package chaos

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Environment of the re-exec'd etcd child (see TestMain).
const (
	envEtcdDir    = "SEALRUN_CHAOS_ETCD_DIR"
	envEtcdClient = "SEALRUN_CHAOS_ETCD_CLIENT_PORT"
	envEtcdPeer   = "SEALRUN_CHAOS_ETCD_PEER_PORT"
)

// runEtcdChild is the body of the etcd child process: a single-node etcd on
// fixed loopback ports (so a restart keeps its address) until SIGTERM.
func runEtcdChild() int {
	ec := embed.NewConfig()
	ec.Dir = os.Getenv(envEtcdDir)
	cu := url.URL{Scheme: "http", Host: "127.0.0.1:" + os.Getenv(envEtcdClient)}
	pu := url.URL{Scheme: "http", Host: "127.0.0.1:" + os.Getenv(envEtcdPeer)}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(ec)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd child:", err)
		return 1
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "etcd child: not ready after 60s")
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		return 0
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "etcd child:", err)
		return 1
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proc is a child process whose output goes to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// startProc starts argv with extra environment, appending its output to
// logPath; it is SIGKILLed at the end of the test if still running.
func startProc(t testing.TB, name, logPath string, env []string, argv ...string) *proc {
	t.Helper()
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = lf, lf
	// Its own group (kill signals the group); dies with the test binary
	// even if that is killed before its cleanups run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); lf.Close(); close(p.done) }()
	t.Cleanup(func() { p.kill(syscall.SIGKILL) })
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill signals the process group and waits for the process to end.
func (p *proc) kill(sig syscall.Signal) {
	if p.exited() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// etcdChild is the re-exec'd etcd the runners share.
type etcdChild struct {
	t                    testing.TB
	dir, log             string
	clientPort, peerPort int
	p                    *proc
}

func startEtcdChild(t testing.TB, dir string) *etcdChild {
	e := &etcdChild{t: t, dir: filepath.Join(dir, "etcd"), log: filepath.Join(dir, "etcd.log"),
		clientPort: freePort(t), peerPort: freePort(t)}
	e.start()
	return e
}

func (e *etcdChild) endpoint() string { return fmt.Sprintf("http://127.0.0.1:%d", e.clientPort) }

func (e *etcdChild) start() {
	e.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		e.t.Fatal(err)
	}
	e.p = startProc(e.t, "etcd", e.log, []string{envEtcdDir + "=" + e.dir,
		envEtcdClient + "=" + strconv.Itoa(e.clientPort), envEtcdPeer + "=" + strconv.Itoa(e.peerPort)},
		exe, "-test.run=^$")
	waitFor(e.t, 60*time.Second, "etcd child to serve", func() bool {
		if e.p.exited() {
			e.t.Fatalf("etcd child exited: %v (log %s)", e.p.err, e.log)
		}
		r, err := http.Get(e.endpoint() + "/health")
		if err != nil {
			return false
		}
		r.Body.Close()
		return r.StatusCode == 200
	})
}

// restart kills etcd with SIGKILL and starts it again on the same data dir
// and ports.
func (e *etcdChild) restart() {
	e.p.kill(syscall.SIGKILL)
	e.start()
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// runCmd runs argv to completion with stdin and returns stdout.
func runCmd(t testing.TB, stdin []byte, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb syncBuf
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %v\nstdout: %s\nstderr: %s", argv[1:], err, out.String(), errb.String())
	}
	return out.String()
}

type syncBuf struct {
	mu sync.Mutex
	b  []byte
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	return len(p), nil
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b)
}
