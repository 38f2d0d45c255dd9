package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sealrun/sealrun/envelope"
)

// python returns Debian's python3, which has python3-nacl and
// python3-pycryptodome (a pyenv python3 earlier on PATH usually does not).
func python(t *testing.T) string {
	t.Helper()
	candidates := []string{os.Getenv("SEALRUN_PYTHON"), "/usr/bin/python3", "python3"}
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if p, err := exec.LookPath(c); err == nil && exec.Command(p, "-c", "import nacl.signing, Cryptodome.Cipher").Run() == nil {
			return p
		}
	}
	t.Fatal("no python3 with nacl and Cryptodome: run scripts/install-deps.sh (Debian python3-nacl, python3-pycryptodome)")
	return ""
}

func interopScript(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "test", "interop", "studioml.py")
}

func py(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(python(t), append([]string{interopScript(t)}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("studioml.py %v: %v\n%s", args[0], err, stderr)
	}
	return string(out)
}

// Messages built the way the StudioML Python client builds them open with
// `sealrun open`; messages from `sealrun seal` and responses sealed by sealrun
// decrypt in Python the way StudioML's consumers do. A 4096-bit key, as
// deployed.
func TestStudioMLPythonInterop(t *testing.T) {
	k := makeKeys(t, "4096")
	pyDir := filepath.Join(k.dir, "python")
	py(t, "", "seal", "--public-key", k.pub, "--out", pyDir, "--count", "6")
	line, err := os.ReadFile(filepath.Join(pyDir, "signing.pub"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(k.signDir, "rmq_cpu_python_"), line, 0o644)

	for i := range 6 {
		msg, _ := os.ReadFile(filepath.Join(pyDir, "msg-"+itoa(i)+".json"))
		req, _ := os.ReadFile(filepath.Join(pyDir, "req-"+itoa(i)+".json"))
		if !strings.Contains(string(msg), `", "`) {
			t.Fatal("python message not written with json.dumps separators")
		}
		code, out, errOut := runCLI(t, string(msg), "open", "--private-key", k.priv, "--passphrase-file", k.pass,
			"--signing-keys", k.signDir, "--queue", "rmq_cpu_python_7")
		if code != 0 {
			t.Fatalf("message %d (signature %s): exit %d: %s", i, map[bool]string{true: "ssh-wire", false: "raw"}[i%2 == 1], code, errOut)
		}
		if strings.TrimSuffix(out, "\n") != string(req) {
			t.Fatalf("message %d: request differs:\n got %.200s\nwant %.200s", i, out, req)
		}
		if strings.Contains(errOut, "fingerprint") {
			t.Fatalf("message %d: fingerprint mismatch reported: %s", i, errOut)
		}
		// The Python client's key is bound to rmq_cpu_python_ only.
		if code, _, _ := runCLI(t, string(msg), "open", "--private-key", k.priv, "--passphrase-file", k.pass,
			"--signing-keys", k.signDir, "--queue", "rmq_cpu_alice_1"); code != exitRejectKey {
			t.Fatalf("message %d opened on a queue its signer is not bound to: exit %d", i, code)
		}
	}

	// sealrun seal → Python opens, verifying signature and fingerprint.
	req := `{"experiment": {"key": "from-go", "note": "caf\u00e9"}, "config": {}}`
	code, msg, errOut := runCLI(t, req, "seal", "--public-key", k.pub, "--signing-key", k.signer)
	if code != 0 {
		t.Fatalf("seal: %s", errOut)
	}
	got := py(t, msg, "open", "--private-key", k.priv, "--passphrase-file", k.pass, "--signing-key", k.signer+".pub")
	if got != req {
		t.Fatalf("python opened %q, want %q", got, req)
	}

	// A response sealed by sealrun opens like StudioML's response catcher does.
	pubData, _ := os.ReadFile(k.pub)
	pub, err := envelope.ParseMessagePublicKey(pubData)
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := envelope.NewPrefixMap(map[string]*envelope.MessagePublicKey{"rmq_cpu_": pub})
	text := "experiment finished"
	payload, err := envelope.SealResponse(keys, "rmq_cpu_alice_1", &envelope.Report{Time: time.Unix(1_800_000_000, 0).UTC(), ExperimentID: "e1", Text: &text})
	if err != nil {
		t.Fatal(err)
	}
	report := py(t, payload, "open-payload", "--private-key", k.priv, "--passphrase-file", k.pass)
	if !strings.Contains(report, `"experimentId":"e1"`) || !strings.Contains(report, `"text":"experiment finished"`) || !strings.Contains(report, `"time":"2027-01-15T08:00:00Z"`) {
		t.Fatalf("report = %s", report)
	}
}

func itoa(i int) string { return string(rune('0' + i)) }
