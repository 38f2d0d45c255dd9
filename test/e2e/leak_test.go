package e2e

import (
	"encoding/base64"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestNoSecretLeaks runs a realistic flow with recognisable secret values —
// key generation, the secrets proxy over an encrypted overlay on etcd, typed
// and raw secrets written and read through it, refused requests, sealing and
// opening both suites, rejected messages, audit verification — and scans
// every log line, audit line, metric, error string and report for them (raw
// and base64): zero hits. The only places a value may appear are the
// outputs that were asked for it (a `secrets get`, an `open`).
func TestNoSecretLeaks(t *testing.T) {
	p := startProxy(t, "")
	dir := t.TempDir()
	pass := canary("passphrase")
	rawValue := canary("raw-value")
	hostPass := canary("host-password")
	request := canary("request")
	wrongKey := "sr1." + strings.ReplaceAll(canary("wrongkey"), "-", "")

	var outputs []result // everything scanned
	scan := func(r result) result { outputs = append(outputs, r); return r }
	expect := func(r result) result { // stdout holds a value by design
		outputs = append(outputs, result{args: r.args, code: r.code, stderr: r.stderr})
		return r
	}

	// Keys, with the canary passphrase.
	passFile := write(t, filepath.Join(dir, "pass"), []byte(pass))
	scan(mustRun(t, nil, "keygen", "rsa", "--bits", "2048", "--passphrase-file", passFile, "--out", filepath.Join(dir, "keys")))
	scan(mustRun(t, nil, "keygen", "hpke", "--out", filepath.Join(dir, "keys")))
	scan(mustRun(t, nil, "keygen", "signing", "--out", filepath.Join(dir, "client"), "--comment", "e2e"))
	pem, err := os.ReadFile(filepath.Join(dir, "keys", "message.pem"))
	if err != nil {
		t.Fatal(err)
	}
	hpkeKey, err := os.ReadFile(filepath.Join(dir, "keys", "hpke.key"))
	if err != nil {
		t.Fatal(err)
	}
	signKey, err := os.ReadFile(filepath.Join(dir, "client", "signing_ed25519"))
	if err != nil {
		t.Fatal(err)
	}
	secretsToFind := map[string]string{"passphrase": pass, "raw value": rawValue, "host password": hostPass,
		"request": request, "wrong API key": wrongKey, "admin API key": p.adminSecret, "reader API key": p.readerSecret,
		"RSA private key": pemBody(pem), "HPKE private key": pemBody(hpkeKey), "signing private key": pemBody(signKey)}
	if mk, err := os.ReadFile(filepath.Join(p.dir, "master.key")); err == nil && len(strings.TrimSpace(string(mk))) >= 16 {
		secretsToFind["overlay master key"] = strings.TrimSpace(string(mk))
	}

	// Typed models and raw values through the proxy.
	b64 := base64.StdEncoding.EncodeToString
	put := func(kind, name string, v any) result {
		js, _ := json.Marshal(v)
		return scan(mustRun(t, js, append(append([]string{"secrets", "put"}, p.via("admin")...), "--kind", kind, name)...))
	}
	put("message-private-key", "message", map[string]string{"key_id": "message", "pem": b64(pem)})
	put("message-passphrase", "message", map[string]string{"key_id": "message", "passphrase": b64([]byte(pass))})
	put("message-private-key", "hpke", map[string]string{"key_id": "hpke", "pem": b64(hpkeKey)})
	put("host-creds", "db1:5432", map[string]string{"address": "db1:5432", "remote_user": "svc", "ssh_private_key": b64([]byte(hostPass))})
	scan(mustRun(t, []byte(rawValue), append(append([]string{"secrets", "put"}, p.via("admin")...), "app/db/password")...))
	if r := expect(mustRun(t, nil, append(append([]string{"secrets", "get"}, p.via("reader")...), "app/db/password")...)); !strings.Contains(r.stdout, rawValue) {
		t.Fatalf("secrets get returned %q", r.stdout)
	}
	expect(mustRun(t, nil, append(append([]string{"secrets", "get"}, p.via("admin")...), "--kind", "host-creds", "db1:5432")...))
	scan(mustRun(t, nil, append(append([]string{"secrets", "ls"}, p.via("admin")...), "--kind", "message-private-key")...))

	// Refusals: wrong key, path not granted, value refused, missing.
	wrongFile := write(t, filepath.Join(dir, "wrong.key"), []byte(wrongKey))
	refused := []result{
		run(t, nil, "secrets", "get", "--socket", p.sock, "--api-id", "reader", "--api-key-file", wrongFile, "app/db/password"),
		run(t, []byte(rawValue), append(append([]string{"secrets", "put"}, p.via("reader")...), "app/db/password")...),
		run(t, nil, append(append([]string{"secrets", "get"}, p.via("reader")...), "--kind", "message-passphrase", "message")...),
		run(t, nil, append(append([]string{"secrets", "get"}, p.via("reader")...), "app/nothing")...),
		run(t, nil, append(append([]string{"secrets", "get"}, p.via("reader")...), "app/../message")...),
	}
	for _, r := range refused {
		if r.code == 0 {
			t.Errorf("sealrun %v succeeded, want a refusal", r.args)
		}
		scan(r)
	}

	// Seal and open both suites; a tampered and a re-targeted message.
	sigDir := filepath.Join(dir, "signing-keys")
	pub, _ := os.ReadFile(filepath.Join(dir, "client", "signing_ed25519.pub"))
	write(t, filepath.Join(sigDir, "e2e_"), pub)
	req := []byte(`{"experiment": {"key": "` + request + `"}, "config": {"env": {"TOKEN": "` + request + `"}}}`)
	studio := scan(mustRun(t, req, "seal", "--public-key", filepath.Join(dir, "keys", "message.pub.pem"),
		"--signing-key", filepath.Join(dir, "client", "signing_ed25519"))).stdout
	hpke := scan(mustRun(t, req, "seal", "--suite", "hpke", "--queue", "e2e_jobs", "--public-key", filepath.Join(dir, "keys", "hpke.pub"),
		"--signing-key", filepath.Join(dir, "client", "signing_ed25519"))).stdout
	open := func(msg, queue string) result {
		return run(t, []byte(msg), "open", "--private-key", filepath.Join(dir, "keys", "message.pem"),
			"--private-key", filepath.Join(dir, "keys", "hpke.key"), "--passphrase-file", passFile,
			"--signing-keys", sigDir, "--queue", queue)
	}
	for _, m := range []string{studio, hpke} {
		if r := expect(open(m, "e2e_jobs")); r.code != 0 || !strings.Contains(r.stdout, request) {
			t.Fatalf("open: %d %s", r.code, r.stderr)
		}
	}
	if r := scan(open(hpke, "e2e_other")); r.code != 3 || !strings.Contains(r.stderr, "rejected:") {
		t.Errorf("HPKE message re-targeted to another queue: exit %d %q, want 3 rejected", r.code, r.stderr)
	}
	tampered := []byte(studio)
	i := strings.Index(studio, `"payload":"`)
	if i < 0 {
		t.Fatalf("no payload in %s", studio)
	}
	i += len(`"payload":"`) + 40
	if tampered[i] == 'A' {
		tampered[i] = 'B'
	} else {
		tampered[i] = 'A'
	}
	if r := scan(open(string(tampered), "e2e_jobs")); r.code == 0 {
		t.Error("a tampered message opened")
	}
	wrongPass := write(t, filepath.Join(dir, "wrong.pass"), []byte(pass+"x"))
	if r := scan(run(t, []byte(studio), "open", "--private-key", filepath.Join(dir, "keys", "message.pem"),
		"--passphrase-file", wrongPass, "--signing-keys", sigDir, "--queue", "e2e_jobs")); r.code == 0 {
		t.Error("opened with a wrong passphrase")
	}

	// Metrics, then stop the proxy so its log and audit are complete.
	metrics := p.metrics(t)
	p.stop()
	scan(mustRun(t, nil, "audit", "verify", p.audit))

	texts := map[string]string{"metrics": metrics}
	for _, f := range []string{p.log, p.audit} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		texts[filepath.Base(f)] = string(b)
	}
	for i, r := range outputs {
		texts["sealrun "+strings.Join(r.args[:min(3, len(r.args))], " ")+" #"+strconv.Itoa(i)] = r.stdout + r.stderr
	}
	// At rest: the proxy's etcd holds the secrets only encrypted.
	_ = filepath.WalkDir(filepath.Join(p.dir, "etcd"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			b, _ := os.ReadFile(path)
			texts["etcd file "+filepath.Base(path)] = string(b)
		}
		return nil
	})
	if len(texts) < 20 || !strings.Contains(texts["proxy.log"], "serving") || !strings.Contains(metrics, "sealrun_proxy_requests_total") {
		t.Fatalf("scanned too little: %d texts", len(texts))
	}
	for where, text := range texts {
		for what, s := range secretsToFind {
			if strings.HasPrefix(where, "etcd file") && strings.Contains(what, "API key") {
				continue // API keys are stored as keyed hashes: checked below
			}
			for _, form := range []string{s, base64.StdEncoding.EncodeToString([]byte(s))} {
				if strings.Contains(text, form) {
					t.Errorf("%s found in %s", what, where)
				}
			}
		}
	}
	for where, text := range texts {
		if strings.HasPrefix(where, "etcd file") && (strings.Contains(text, p.adminSecret) || strings.Contains(text, p.readerSecret)) {
			t.Errorf("an API key is stored in clear in %s", where)
		}
	}
}

// pemBody is a distinctive line from inside a PEM block (the base64 body).
func pemBody(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for _, l := range lines {
		if len(l) >= 40 && !strings.HasPrefix(l, "-----") && !strings.Contains(l, ":") {
			return l
		}
	}
	return string(b)
}
