package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs sealrun in-process with stdin and returns code, stdout, stderr.
func runCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := dispatch(context.Background(), stdio{in: strings.NewReader(stdin), out: &out, err: &errb}, args)
	return code, out.String(), errb.String()
}

func TestHelpForEveryCommand(t *testing.T) {
	code, out, _ := runCLI(t, "", "help")
	if code != 0 || !strings.Contains(out, "Commands:") {
		t.Fatalf("help: %d %s", code, out)
	}
	for _, c := range commands {
		for _, args := range [][]string{{c.name, "--help"}, {"help", c.name}} {
			code, out, errOut := runCLI(t, "", args...)
			if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, "Examples:") || errOut != "" {
				t.Errorf("%v: code %d, stdout %q, stderr %q", args, code, out, errOut)
			}
		}
	}
	for _, sub := range []string{"rsa", "signing", "hpke"} {
		if code, out, _ := runCLI(t, "", "keygen", sub, "--help"); code != 0 || !strings.Contains(out, "Examples:") {
			t.Errorf("keygen %s --help: %d %s", sub, code, out)
		}
	}
}

func TestUsageErrorsExit2(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"no-such-command"},
		{"seal", "--no-such-flag"},
		{"seal"},
		{"seal", "--public-key", "p", "--signing-key", "k", "--suite", "rot13"},
		{"seal", "--public-key", "p", "--signing-key", "k", "--suite", "hpke"}, // no --queue
		{"open", "--private-key", "k", "--signing-keys", "d"},                  // no --queue
		{"keygen"},
		{"keygen", "rsa", "--out", "x"},
		{"keygen", "rsa", "--passphrase-file", "p", "--out", "x", "--bits", "1024"},
		{"keygen", "hpke", "--out", "x", "--suite", "studioml"},
		{"version", "extra", "--bad"},
	} {
		code, out, errOut := runCLI(t, "", args...)
		if code != exitUsage {
			t.Errorf("%v: exit %d, want 2 (stdout %q stderr %q)", args, code, out, errOut)
		}
		if errOut == "" {
			t.Errorf("%v: no message on stderr", args)
		}
	}
}

// keys makes a full key set in a temp dir with the CLI, as an operator would.
type keySet struct {
	dir, pass, priv, pub, hpkePriv, hpkePub, signer, signDir string
}

func makeKeys(t *testing.T, bits string) keySet {
	t.Helper()
	d := t.TempDir()
	k := keySet{dir: d, pass: filepath.Join(d, "pass"), signDir: filepath.Join(d, "signing-keys")}
	// A trailing newline, as `echo` writes it: sealrun must cope.
	if err := os.WriteFile(k.pass, []byte("s3cret-passphrase\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"keygen", "rsa", "--bits", bits, "--passphrase-file", k.pass, "--out", filepath.Join(d, "keys")},
		{"keygen", "hpke", "--out", filepath.Join(d, "keys")},
		{"keygen", "signing", "--out", filepath.Join(d, "client"), "--comment", "alice@lab"},
	} {
		if code, out, errOut := runCLI(t, "", args...); code != 0 {
			t.Fatalf("%v: %d %s %s", args, code, out, errOut)
		}
	}
	k.priv, k.pub = filepath.Join(d, "keys", "message.pem"), filepath.Join(d, "keys", "message.pub.pem")
	k.hpkePriv, k.hpkePub = filepath.Join(d, "keys", "hpke.key"), filepath.Join(d, "keys", "hpke.pub")
	k.signer = filepath.Join(d, "client", "signing_ed25519")
	os.Mkdir(k.signDir, 0o755)
	line, _ := os.ReadFile(k.signer + ".pub")
	os.WriteFile(filepath.Join(k.signDir, "rmq_cpu_alice_"), line, 0o644)
	os.WriteFile(filepath.Join(k.signDir, "info"), []byte("dummy"), 0o644)
	return k
}

func TestKeygenFileModes(t *testing.T) {
	k := makeKeys(t, "2048")
	for path, want := range map[string]os.FileMode{k.priv: 0o600, k.pub: 0o644, k.hpkePriv: 0o600, k.hpkePub: 0o644, k.signer: 0o600, k.signer + ".pub": 0o644} {
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v (%v)", path, fi.Mode().Perm(), want, err)
		}
	}
	pem, _ := os.ReadFile(k.priv)
	if !bytes.Contains(pem, []byte("Proc-Type: 4,ENCRYPTED")) || !bytes.Contains(pem, []byte("DEK-Info: AES-128-CBC")) {
		t.Error("message.pem is not a legacy encrypted PEM")
	}
	pub, _ := os.ReadFile(k.pub)
	if !bytes.HasPrefix(pub, []byte("-----BEGIN RSA PUBLIC KEY-----")) {
		t.Error("message.pub.pem is not PKCS#1")
	}
	// Existing keys are never overwritten without --force.
	code, _, errOut := runCLI(t, "", "keygen", "hpke", "--out", filepath.Join(k.dir, "keys"))
	if code != exitError || !strings.Contains(errOut, "--force") {
		t.Fatalf("overwrite: %d %s", code, errOut)
	}
}

func TestSealOpenCLI(t *testing.T) {
	k := makeKeys(t, "2048")
	req := `{"experiment": {"key": "e1"}, "config": {}}`
	for _, suite := range []struct{ name, pub, priv string }{
		{"studioml", k.pub, k.priv},
		{"hpke", k.hpkePub, k.hpkePriv},
	} {
		t.Run(suite.name, func(t *testing.T) {
			code, msg, errOut := runCLI(t, req, "seal", "--suite", suite.name, "--public-key", suite.pub, "--signing-key", k.signer, "--queue", "rmq_cpu_alice_1")
			if code != 0 {
				t.Fatalf("seal: %d %s", code, errOut)
			}
			open := []string{"open", "--private-key", suite.priv, "--passphrase-file", k.pass, "--signing-keys", k.signDir, "--queue", "rmq_cpu_alice_1"}
			code, out, errOut := runCLI(t, msg, open...)
			if code != 0 || strings.TrimSpace(out) != req {
				t.Fatalf("open: %d %q %s", code, out, errOut)
			}
			// Tampered: flip one base64 character deep inside the message.
			i := len(msg) / 2
			for msg[i] == '"' || msg[i] == ',' || msg[i] == ':' {
				i++
			}
			c := byte('A')
			if msg[i] == 'A' {
				c = 'B'
			}
			tampered := msg[:i] + string(c) + msg[i+1:]
			code, out, errOut = runCLI(t, tampered, open...)
			if code != exitRejectKey || out != "" || !strings.HasPrefix(errOut, "rejected: ") || strings.Count(errOut, "\n") != 1 {
				t.Fatalf("tampered: %d %q %q", code, out, errOut)
			}
			// Another queue: no signing key (StudioML) or wrong queue (HPKE).
			code, _, errOut = runCLI(t, msg, append(open[:len(open)-1], "gpu_queue_1")...)
			if code != exitRejectKey {
				t.Fatalf("other queue: %d %s", code, errOut)
			}
		})
	}
}

func TestOpenExitCodes(t *testing.T) {
	k := makeKeys(t, "2048")
	open := []string{"open", "--private-key", k.priv, "--passphrase-file", k.pass, "--signing-keys", k.signDir, "--queue", "rmq_cpu_alice_1"}
	cases := []struct {
		name, body string
		extra      []string
		code       int
	}{
		{"non-JSON", "not json", nil, exitRejectFormat},
		{"clear text refused", `{"experiment": {}, "config": {}}`, nil, exitRejectClearText},
		{"clear text allowed", `{"experiment": {}, "config": {}}`, []string{"--allow-clear-text"}, 0},
		{"missing signature", `{"message": {"payload": "AAAA,AAAA"}}`, nil, exitRejectKey},
	}
	for _, c := range cases {
		code, _, errOut := runCLI(t, c.body, append(append([]string{}, open...), c.extra...)...)
		if code != c.code {
			t.Errorf("%s: exit %d, want %d (%s)", c.name, code, c.code, errOut)
		}
	}
	// A wrong passphrase is an operator error (exit 1) that never echoes it.
	os.WriteFile(k.pass, []byte("Zebra-Passphrase-77"), 0o600)
	code, _, errOut := runCLI(t, "{}", open...)
	if code != exitError || strings.Contains(errOut, "Zebra") || !strings.Contains(errOut, "passphrase") {
		t.Fatalf("wrong passphrase: %d %q", code, errOut)
	}
}
