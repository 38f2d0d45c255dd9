package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/proxy/audit"
)

// python runs attack.py (a separate process) with reqs against sock.
func python(t *testing.T, sock string, reqs []pyRequest) []pyResult {
	t.Helper()
	in, _ := json.Marshal(reqs)
	cmd := exec.Command("python3", "attack.py", sock)
	cmd.Stdin = bytes.NewReader(in)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("attack.py: %v\n%s", err, errb.String())
	}
	var res []pyResult
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r pyResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("attack.py output %q: %v", sc.Text(), err)
		}
		res = append(res, r)
	}
	if len(res) != len(reqs) {
		t.Fatalf("attack.py answered %d of %d requests", len(res), len(reqs))
	}
	return res
}

func rawReq(method, target, id, key, body string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n", method, target)
	if id != "" {
		fmt.Fprintf(&b, "CUSTODIA_AUTH_ID: %s\r\nCUSTODIA_AUTH_KEY: %s\r\n", id, key)
	}
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	if body != "" || method == "PUT" {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n" + body)
	return b.String()
}

func status(r pyResult) int {
	if r.Status == nil {
		return 0
	}
	return *r.Status
}

// TestProxyAttacksFromAnotherProcess: a Python process speaks raw HTTP to
// the proxy process's socket. Traversal and encoding tricks that a Go
// client would have cleaned before sending, oversized bodies, brute force:
// each is refused with the right status, and every refusal is audited with
// the attacker's pid.
func TestProxyAttacksFromAnotherProcess(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		t.Fatal("python3 is required (make deps installs it)")
	}
	p := startProxy(t, "limits: {max_body: 4096}")
	secret := canary("bob-secret")
	admin := func(method, target, body string) pyRequest {
		return pyRequest{Raw: rawReq(method, target, "admin", p.adminSecret, body)}
	}
	simple := func(v string) string { return fmt.Sprintf(`{"type":"simple","value":%q}`, v) }
	for i, r := range python(t, p.sock, []pyRequest{
		admin("POST", "/secrets/app/", ""), admin("POST", "/secrets/bob/", ""),
		admin("PUT", "/secrets/bob/k", simple(secret)), admin("PUT", "/secrets/app/x", simple("public")),
	}) {
		if status(r) != 201 {
			t.Fatalf("setup request %d: %d %s %s", i, status(r), r.Body, r.Error)
		}
	}
	fi, err := os.Stat(p.sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %v (%v), want a 0600 socket", fi.Mode(), err)
	}

	reader := func(target string) string { return rawReq("GET", target, "reader", p.readerSecret, "") }
	cases := []struct {
		name string
		raw  string
		want int // 0: anything but 2xx
	}{
		{"control: granted read", reader("/secrets/app/x"), 200},
		{"plain other path", reader("/secrets/bob/k"), 403},
		{"dot-dot (never resolved; 404 as Custodia, which looks it up literally)", reader("/secrets/app/../bob/k"), 404},
		{"encoded dot-dot", reader("/secrets/app/%2e%2e/bob/k"), 400},
		{"upper-case encoded dot-dot and slashes", reader("/secrets/app/%2E%2E%2Fbob%2Fk"), 400},
		{"double-encoded dot-dot", reader("/secrets/app/%252e%252e/bob/k"), 0},
		{"overlong UTF-8 dots", reader("/secrets/app/%c0%ae%c0%ae/bob/k"), 0},
		{"encoded backslash", reader("/secrets/app/..%5cbob%5ck"), 400},
		{"NUL", reader("/secrets/app/x%00/../../bob/k"), 400},
		{"double slash", reader("/secrets//bob/k"), 0},
		{"matrix parameter", reader("/secrets/app;/../bob/k"), 0},
		{"absolute-form target", reader("http://localhost/secrets/bob/k"), 403},
		{"upper-case prefix", reader("/SECRETS/bob/k"), 0},
		{"over-long path", reader("/secrets/app/" + strings.Repeat("a", 2048)), 400},
		{"oversized body", rawReq("PUT", "/secrets/app/big", "admin", p.adminSecret, simple(strings.Repeat("x", 5000))), 413},
		{"oversized chunked body", chunked("/secrets/app/big2", p.adminSecret, simple(strings.Repeat("y", 8000))), 413},
		{"oversized headers", rawReq("GET", "/secrets/app/x", "reader", p.readerSecret, "", "X-Pad: "+strings.Repeat("p", 64<<10)), 431},
	}
	var reqs []pyRequest
	for _, c := range cases {
		reqs = append(reqs, pyRequest{Raw: c.raw})
	}
	res := python(t, p.sock, reqs)
	attacker := 0
	for i, c := range cases {
		got := status(res[i])
		if attacker == 0 && res[i].PID != 0 {
			attacker = res[i].PID
		}
		if c.want != 0 && got != c.want || c.want == 0 && (got == 0 || got/100 == 2) {
			t.Errorf("%s: status %d (%s %s), want %d", c.name, got, res[i].Body, res[i].Error, c.want)
		}
		if strings.Contains(res[i].Body, secret) {
			t.Errorf("%s: the response holds bob's secret", c.name)
		}
	}

	// Brute force, last (it locks this uid out for a while): wrong keys
	// for a real id are answered 403, then 429.
	var brute []pyRequest
	for i := range 60 {
		brute = append(brute, pyRequest{Raw: rawReq("GET", "/secrets/app/x", "reader", fmt.Sprintf("sr1.guess%03d", i), "")})
	}
	bres := python(t, p.sock, brute)
	n403, n429 := 0, 0
	for _, r := range bres {
		switch status(r) {
		case 403:
			n403++
		case 429:
			n429++
		default:
			t.Errorf("brute force answered %d %s", status(r), r.Body)
		}
	}
	if n429 == 0 {
		t.Errorf("brute force: %d × 403, %d × 429; want the guessing rate-limited after the burst", n403, n429)
	}
	bpid := bres[0].PID

	// Everything that reached the proxy's handler is audited with the
	// attacker's pid; the chain verifies; no secret or guess is in it.
	p.stop()
	entries := auditEntries(t, p.audit)
	audited := map[int]int{}
	bruteAudited := map[int]int{}
	for _, e := range entries {
		if e.PeerPID != nil && *e.PeerPID == attacker {
			audited[e.Status]++
		}
		if e.PeerPID != nil && *e.PeerPID == bpid {
			bruteAudited[e.Status]++
		}
	}
	want := map[int]int{}
	for i := range cases {
		if s := status(res[i]); s != 431 { // refused by net/http before any handler
			want[s]++
		}
	}
	for s, n := range want {
		if audited[s] != n {
			t.Errorf("attacks answered %d: %d audited with the attacker's pid, want %d (audit %v)", s, audited[s], n, audited)
		}
	}
	if bruteAudited[403] != n403 || bruteAudited[429] != n429 {
		t.Errorf("brute force audit %v, want 403×%d 429×%d", bruteAudited, n403, n429)
	}
	data, _ := os.ReadFile(p.audit)
	if strings.Contains(string(data), secret) || strings.Contains(string(data), "sr1.guess") || strings.Contains(string(data), p.readerSecret) {
		t.Error("the audit log holds a secret value or a presented key")
	}
	if r := run(t, nil, "audit", "verify", p.audit); r.code != 0 {
		t.Errorf("audit verify: %d %s %s", r.code, r.stdout, r.stderr)
	}
}

// chunked is a PUT with a chunked body (no Content-Length to refuse early).
func chunked(target, key, body string) string {
	return fmt.Sprintf("PUT %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nCUSTODIA_AUTH_ID: admin\r\n"+
		"CUSTODIA_AUTH_KEY: %s\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n",
		target, key, len(body), body)
}

// auditEntries reads the audit log, checking its hash chain.
func auditEntries(t *testing.T, path string) []audit.Entry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	entries, err := audit.ReadVerified(f)
	if err != nil {
		t.Fatalf("audit log %s: %v", path, err)
	}
	return entries
}
