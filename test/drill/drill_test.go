// Package drill is the disaster-recovery drill: it runs the built sealrun
// binary as an operator would on the worst day. A store is populated through
// the proxy (typed keys, raw secrets, a key ring whose old key is still in
// use), both master keys are split 3-of-5 and the store is backed up; then
// the key files and the etcd data are destroyed, the keys are restored from
// 3 typed shares each, the backup is loaded into a new etcd, and a new proxy
// and runner on it read every secret back byte for byte and open and answer
// a message that was queued during the outage. Real etcd (embedded in the
// proxy), real RabbitMQ. Run verbosely with `make drill`.
package drill

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/testenv"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sealrun-drill-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "sealrun")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/sealrun/sealrun/cmd/sealrun").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build sealrun: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	testenv.StopRabbitMQ()
	os.RemoveAll(dir)
	os.Exit(code)
}

type drill struct {
	t     *testing.T
	dir   string
	start time.Time
}

func (d *drill) step(format string, a ...any) {
	d.t.Logf("[%6.2fs] %s", time.Since(d.start).Seconds(), fmt.Sprintf(format, a...))
}

// run runs sealrun and fails on a non-zero exit.
func (d *drill) run(stdin []byte, args ...string) string {
	d.t.Helper()
	out, errOut, code := d.try(stdin, args...)
	if code != 0 {
		d.t.Fatalf("sealrun %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func (d *drill) try(stdin []byte, args ...string) (string, string, int) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return out.String(), errb.String(), ee.ExitCode()
	} else if err != nil {
		d.t.Fatal(err)
	}
	return out.String(), errb.String(), 0
}

func (d *drill) write(name string, data []byte) string {
	d.t.Helper()
	p := filepath.Join(d.dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		d.t.Fatal(err)
	}
	return p
}

func (d *drill) read(name string) []byte {
	d.t.Helper()
	b, err := os.ReadFile(filepath.Join(d.dir, name))
	if err != nil {
		d.t.Fatal(err)
	}
	return b
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is a long-running sealrun child process.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	log  string
}

// serve starts sealrun args and waits until http://ready answers 200.
func (d *drill) serve(logName, ready string, args ...string) *proc {
	d.t.Helper()
	p := &proc{log: filepath.Join(d.dir, logName), done: make(chan struct{})}
	lf, err := os.Create(p.log)
	if err != nil {
		d.t.Fatal(err)
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	if err := p.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); lf.Close(); close(p.done) }()
	d.t.Cleanup(p.stop)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if r, err := http.Get("http://" + ready + "/readyz"); err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return p
			}
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(p.log)
			d.t.Fatalf("sealrun %s exited: %s", args[0], b)
		case <-time.After(50 * time.Millisecond): // polling readiness, not synchronising on time
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(p.log)
			d.t.Fatalf("sealrun %s not ready after 60s: %s", args[0], b)
		}
	}
}

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// typedLines is what an operator types from a printed share: its numbered lines.
func typedLines(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var w strings.Builder
	for _, l := range strings.Split(string(b), "\n") {
		if len(l) > 2 && l[0] >= '0' && l[0] <= '9' {
			w.WriteString(l + "\n")
		}
	}
	return w.String()
}

func TestRestoreDrill(t *testing.T) {
	d := &drill{t: t, dir: t.TempDir(), start: time.Now()}
	amqp := testenv.RabbitMQ(t).VHost(t)
	d.step("RabbitMQ vhost ready")

	sock, ops := filepath.Join(d.dir, "secrets.sock"), freeAddr(t)
	proxyCfg := func(master string, old ...string) string {
		oldKeys := ""
		if len(old) > 0 {
			oldKeys = ", old_keys: [" + strings.Join(old, ", ") + "]"
		}
		return d.write("proxy.yaml", []byte(fmt.Sprintf(`listen: {socket: %s}
ops_listen: %s
audit_log: %s
storage:
  state: {backend: etcd, etcd: {data_dir: %s}}
  secrets: {backend: overlay, overlay: {store: etcd, master_key: %s, autogen: true%s}}
`, sock, ops, filepath.Join(d.dir, "audit.log"), filepath.Join(d.dir, "etcd"), master, oldKeys)))
	}
	key1, key2 := filepath.Join(d.dir, "master-1.key"), filepath.Join(d.dir, "master-2.key")
	cfg := proxyCfg(key1)
	d.write("admin.key", []byte(strings.TrimSpace(d.run(nil, "secrets", "apikey", "create", "--config", cfg, "--id", "admin",
		"--path", "/secrets/", "--verbs", "get,list,put,create,delete"))))
	d.write("runner.key", []byte(strings.TrimSpace(d.run(nil, "secrets", "apikey", "create", "--config", cfg, "--id", "runner-1",
		"--path", "/secrets/sealrun/", "--verbs", "get,list,watch"))))
	via := []string{"--socket", sock, "--api-id", "admin", "--api-key-file", filepath.Join(d.dir, "admin.key")}

	// Keys a runner needs and a client's keys.
	pass := d.write("pass", []byte("drill-passphrase-7f3a"))
	d.run(nil, "keygen", "rsa", "--bits", "2048", "--passphrase-file", pass, "--out", filepath.Join(d.dir, "keys"))
	d.run(nil, "keygen", "signing", "--out", filepath.Join(d.dir, "client"), "--comment", "drill-client")
	d.run(nil, "keygen", "rsa", "--bits", "2048", "--passphrase-file", pass, "--out", filepath.Join(d.dir, "client", "resp"))
	b64 := func(name string) string { return base64.StdEncoding.EncodeToString(d.read(name)) }
	js := func(v any) []byte { b, _ := json.Marshal(v); return b }
	// want is every secret as stored: kind, path, the exact bytes given to put.
	type secret struct {
		kind, path string
		value      []byte
	}
	var want []secret
	put := func(kind, path string, value []byte) {
		d.run(value, append(append([]string{"secrets", "put"}, via...), "--kind", kind, path)...)
		want = append(want, secret{kind, path, value})
	}

	d.step("proxy 1: master key 1 (autogen), embedded etcd")
	p := d.serve("proxy-1.log", ops, "secrets", "serve", "--config", cfg)
	put("message-private-key", "message", js(map[string]string{"key_id": "message", "pem": b64("keys/message.pem")}))
	put("message-passphrase", "message", js(map[string]string{"key_id": "message", "passphrase": b64("pass")}))
	put("response-key", "drill_", js(map[string]string{"response_prefix": "drill_", "public_key_pem": string(d.read("client/resp/message.pub.pem"))}))
	for i := range 20 {
		put("raw", fmt.Sprintf("drill/secret-%02d", i), []byte(fmt.Sprintf("PLAINTEXT-%02d-%x", i, time.Now().UnixNano())))
	}
	p.stop()

	d.step("rotate: master key 2 current, key 1 kept in old_keys and still sealing the first records")
	d.run(nil, "rotate", "master-key", "--config", cfg, "--new-key", key2, "--prepare")
	cfg = proxyCfg(key2, key1)
	p = d.serve("proxy-2.log", ops, "secrets", "serve", "--config", cfg)
	put("signing-key", "drill_", js(map[string]string{"queue_prefix": "drill_", "public_key": strings.TrimSpace(string(d.read("client/signing_ed25519.pub")))}))
	for i := range 5 {
		put("raw", fmt.Sprintf("drill/new-%02d", i), []byte(fmt.Sprintf("PLAINTEXT-NEW-%02d-%x", i, time.Now().UnixNano())))
	}
	runnerHTTP := freeAddr(t)
	runnerCfg := func(stateDir string) string {
		return d.write("runner.yaml", []byte(fmt.Sprintf(`runner_id: drill-runner
amqp: {url: %q}
queues: [drill_jobs]
dead_letter: {}
keys:
  source: proxy
  proxy: {socket: %s, api_id: runner-1, api_key_file: %s}
executor:
  command: ["/bin/sh", "-c", "echo ran {{.ID}} on {{.Queue}}"]
http: {listen: %q}
storage:
  state: {backend: etcd, etcd: {data_dir: %s}}
  secrets: {backend: none}
`, amqp, sock, filepath.Join(d.dir, "runner.key"), runnerHTTP, filepath.Join(d.dir, stateDir))))
	}
	// The runner declares its queue once, so messages can wait in it during the outage.
	d.serve("runner-1.log", runnerHTTP, "runner", "--config", runnerCfg("runner-etcd-1")).stop()
	p.stop()
	status := d.run(nil, "rotate", "status", "--config", cfg)
	d.step("rotate status:\n%s", status)

	d.step("backup: split both master keys 3-of-5, back up the store")
	orig1, orig2 := d.read("master-1.key"), d.read("master-2.key")
	id1 := d.run(nil, "backup", "split", "--key", key1, "--shares", "5", "--threshold", "3", "--out", filepath.Join(d.dir, "shares"))
	id2 := d.run(nil, "backup", "split", "--key", key2, "--shares", "5", "--threshold", "3", "--out", filepath.Join(d.dir, "shares"))
	d.step("%s", strings.SplitN(id1, "\n", 2)[0])
	d.step("%s", strings.SplitN(id2, "\n", 2)[0])
	storeOut := d.run(nil, "backup", "store", "--config", cfg, "--out", filepath.Join(d.dir, "store-backup.json"))
	d.step("%s", strings.TrimSpace(storeOut))
	backupFile := d.read("store-backup.json")
	for _, s := range want {
		for _, form := range [][]byte{s.value, []byte(base64.StdEncoding.EncodeToString(s.value))} {
			if bytes.Contains(backupFile, form) {
				t.Fatalf("the store backup holds the plaintext of %s %s", s.kind, s.path)
			}
		}
	}
	if bytes.Contains(backupFile, []byte("PLAINTEXT-")) {
		t.Fatal("the store backup holds a plaintext")
	}

	d.step("outage: a message is queued while nothing runs")
	req := d.write("req.json", []byte(`{"experiment": {"key": "drill-job"}, "config": {}}`))
	// The response queue must exist for the runner to answer on it.
	_, _, _ = d.try(nil, "responses", "--amqp", amqp, "--queue", "drill_jobs", "--private-key", filepath.Join(d.dir, "client/resp/message.pem"),
		"--passphrase-file", pass, "--wait", "1s")
	d.run(nil, "send", "--amqp", amqp, "--queue", "drill_jobs", "--public-key", filepath.Join(d.dir, "keys/message.pub.pem"),
		"--signing-key", filepath.Join(d.dir, "client/signing_ed25519"), "--request", req)

	d.step("disaster: delete both key files and the etcd data")
	for _, p := range []string{key1, key2, filepath.Join(d.dir, "etcd")} {
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
	}
	d.step("restore: each key from 3 shares typed on stdin")
	shares := func(kid string, idx ...int) string {
		var w strings.Builder
		for _, i := range idx {
			m, _ := filepath.Glob(filepath.Join(d.dir, "shares", fmt.Sprintf("*%s*-share-%d-of-5.txt", kid, i)))
			if len(m) != 1 {
				t.Fatalf("share %d of %s: %v", i, kid, m)
			}
			w.WriteString(typedLines(t, m[0]))
		}
		return w.String()
	}
	kid1 := strings.Fields(id1)[1]
	kid2 := strings.Fields(id2)[1]
	kid1, kid2 = strings.TrimSuffix(kid1, ":"), strings.TrimSuffix(kid2, ":")
	// Too few shares are refused first, with the count still needed.
	if _, errOut, code := d.try([]byte(shares(kid1[:8], 1, 2)), "backup", "restore", "--out", key1, "-"); code != 1 || !strings.Contains(errOut, "find 1 more") {
		t.Fatalf("restore with 2 shares: exit %d %s", code, errOut)
	}
	d.step("%s", strings.TrimSpace(d.run([]byte(shares(kid1[:8], 1, 3, 5)), "backup", "restore", "--out", key1, "-")))
	d.step("%s", strings.TrimSpace(d.run([]byte(shares(kid2[:8], 2, 4, 5)), "backup", "restore", "--out", key2, "-")))
	if !bytes.Equal(d.read("master-1.key"), orig1) || !bytes.Equal(d.read("master-2.key"), orig2) {
		t.Fatal("a restored key file differs from the original")
	}

	d.step("load the store backup into a new, empty etcd")
	d.step("%s", strings.TrimSpace(d.run(nil, "backup", "load", "--config", cfg, "--in", filepath.Join(d.dir, "store-backup.json"))))
	if _, errOut, code := d.try(nil, "backup", "load", "--config", cfg, "--in", filepath.Join(d.dir, "store-backup.json")); code != 1 || !strings.Contains(errOut, "already holds") {
		t.Fatalf("second load: exit %d %s", code, errOut)
	}

	d.step("proxy 3 on the restored store: every secret reads back byte for byte")
	d.serve("proxy-3.log", ops, "secrets", "serve", "--config", cfg)
	for _, s := range want {
		got := d.run(nil, append(append([]string{"secrets", "get"}, via...), "--kind", s.kind, s.path)...)
		if !sameValue(s.value, []byte(got)) {
			t.Fatalf("%s %s after restore: got %q", s.kind, s.path, got)
		}
	}
	d.step("%d secrets read back", len(want))

	d.step("runner on the restored proxy (new state etcd) opens and answers the queued message")
	d.serve("runner-2.log", runnerHTTP, "runner", "--config", runnerCfg("runner-etcd-2"))
	resp := d.run(nil, "responses", "--amqp", amqp, "--queue", "drill_jobs", "--private-key", filepath.Join(d.dir, "client/resp/message.pem"),
		"--passphrase-file", pass, "--count", "3", "--wait", "60s")
	// A job answers as StudioML's runner does: Started, the log entry, then
	// the final Success report.
	if !strings.Contains(resp, `"state":"Success"`) || !strings.Contains(resp, "drill_jobs") {
		t.Fatalf("response: %s", resp)
	}
	d.step("answer: %s", strings.TrimSpace(resp))
	d.step("drill done in %.1fs", time.Since(d.start).Seconds())
}

// sameValue compares a put value with what get printed: byte for byte, or for
// JSON models the same JSON (get prints models re-encoded).
func sameValue(put, got []byte) bool {
	if bytes.Equal(bytes.TrimSpace(put), bytes.TrimSpace(got)) {
		return true
	}
	var a, b any
	if json.Unmarshal(put, &a) != nil || json.Unmarshal(got, &b) != nil {
		return false
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}
