package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestConfigExamples loads every shipped example with its component's real
// loader and requires every option to be written out, so the examples
// cannot drift from the code.
func TestConfigExamples(t *testing.T) {
	// The systemd examples name their key files ${CREDENTIALS_DIRECTORY}/...
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/sealrun-secrets.service")
	files, err := filepath.Glob("../../configs/*.yaml")
	if err != nil || len(files) < 8 {
		t.Fatalf("configs: %v %v", files, err)
	}
	// The examples this deployment work ships: one per component and style,
	// each complete. Other examples (the runner's own, feature examples)
	// must load; completeness is their owners' call.
	complete := map[string]string{
		"proxy.yaml": "proxy", "proxy-etcd-tls.yaml": "proxy", "proxy-vault.yaml": "proxy",
		"runner-single-node.yaml": "runner", "runner-etcd-tls.yaml": "runner",
		"sealrun.yaml": "storage", "storage-etcd-tls.yaml": "storage", "vault.yaml": "storage",
	}
	kinds := map[string]string{}
	for _, f := range files {
		args := []string{"config", "check", f}
		if _, ok := complete[filepath.Base(f)]; ok {
			args = []string{"config", "check", "--complete", f}
		}
		code, out, errOut := runCLI(t, "", args...)
		if code != exitOK {
			t.Errorf("%s: exit %d: %s", filepath.Base(f), code, errOut)
			continue
		}
		kind := out[strings.Index(out, "(")+1 : strings.Index(out, " config)")]
		kinds[filepath.Base(f)] = kind
	}
	for f, want := range complete {
		if kinds[f] != want {
			t.Errorf("configs/%s detected as %q, want %q", f, kinds[f], want)
		}
	}
}

// TestConfigPrintDefault: each default is complete and passes check as printed.
func TestConfigPrintDefault(t *testing.T) {
	dir := t.TempDir()
	for _, kind := range []string{"proxy", "runner", "storage"} {
		code, out, errOut := runCLI(t, "", "config", "print-default", kind)
		if code != exitOK || !strings.HasPrefix(out, "# sealrun") {
			t.Fatalf("print-default %s: %d %q", kind, code, errOut)
		}
		f := filepath.Join(dir, kind+".yaml")
		if err := os.WriteFile(f, []byte(out), 0o600); err != nil {
			t.Fatal(err)
		}
		if code, out, errOut := runCLI(t, "", "config", "check", "--complete", f); code != exitOK || !strings.Contains(out, "("+kind+" config)") {
			t.Errorf("check of the %s default: %d %q %q", kind, code, out, errOut)
		}
	}
	if code, _, _ := runCLI(t, "", "config", "print-default", "vault"); code != exitUsage {
		t.Errorf("print-default vault: exit %d, want 2", code)
	}
	if code, _, _ := runCLI(t, "", "config", "print-default"); code != exitUsage {
		t.Errorf("print-default without a kind: exit %d, want 2", code)
	}
}

func TestConfigCheckErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, body string
		args       []string
		code       int
		want       string
	}{
		{"unknown field", "state: {backend: memory}\nsecrets: {backend: none}\nstat: {}\n", nil, exitError, "stat"},
		{"invalid value", "state: {backend: memory}\nsecrets: {backend: s3}\n", nil, exitError, "s3"},
		{"proxy unknown field", "listen: {sockett: /x}\nstorage: {state: {backend: memory}, secrets: {backend: none}}\n", nil, exitError, "sockett"},
		{"runner without queues", "amqp: {url: amqp://h}\nkeys: {source: dir, dir: /k}\nexecutor: {type: noop}\n", nil, exitError, "queues"},
		{"unknown kind", "foo: 1\n", nil, exitError, "--kind"},
		{"incomplete", "state: {backend: etcd, etcd: {data_dir: /d}}\nsecrets: {backend: none}\n", []string{"--complete"}, exitError, "not written out: state.etcd.endpoints, state.etcd.prefix"},
		{"minimal ok", "state: {backend: memory}\nsecrets: {backend: none}\n", nil, exitOK, "(storage config)"},
		{"forced kind", "state: {backend: memory}\nsecrets: {backend: none}\n", []string{"--kind", "proxy"}, exitError, "proxy config"},
		{"credential unset", "state: {backend: memory}\nsecrets: {backend: overlay, overlay: {store: memory, master_key: \"${CREDENTIALS_DIRECTORY}/k\"}}\n", nil, exitError, "CREDENTIALS_DIRECTORY is not set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CREDENTIALS_DIRECTORY", "")
			args := append(append([]string{"config", "check"}, tc.args...), write(strings.ReplaceAll(tc.name, " ", "-")+".yaml", tc.body))
			code, out, errOut := runCLI(t, "", args...)
			if code != tc.code || !strings.Contains(out+errOut, tc.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d mentioning %q", code, out, errOut, tc.code, tc.want)
			}
		})
	}
	if code, _, _ := runCLI(t, "", "config", "check"); code != exitUsage {
		t.Errorf("check without FILE: exit %d, want 2", code)
	}
	if code, _, _ := runCLI(t, "", "config", "check", filepath.Join(dir, "missing.yaml")); code != exitError {
		t.Errorf("check of a missing file: exit %d, want 1", code)
	}
}

// TestConfigExamplePorts: a proxy and runners run on one host, so no runner
// example listens where a proxy example does, and the runners meant to run
// side by side (runner-shared-*) differ from each other.
func TestConfigExamplePorts(t *testing.T) {
	files, err := filepath.Glob("../../configs/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	listen := func(f string) (proxy bool, addr string) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			OpsListen string `yaml:"ops_listen"`
			HTTP      struct {
				Listen string `yaml:"listen"`
			} `yaml:"http"`
		}
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if doc.OpsListen != "" {
			return true, doc.OpsListen
		}
		return false, doc.HTTP.Listen
	}
	proxies, runners, shared := map[string]string{}, map[string]string{}, map[string]string{}
	for _, f := range files {
		isProxy, addr := listen(f)
		name := filepath.Base(f)
		switch {
		case addr == "":
		case isProxy:
			proxies[addr] = name
		case strings.HasPrefix(name, "runner"):
			runners[name] = addr
			if strings.HasPrefix(name, "runner-shared-") {
				if other, dup := shared[addr]; dup {
					t.Errorf("%s and %s both listen on %s", name, other, addr)
				}
				shared[addr] = name
			}
		}
	}
	if len(proxies) == 0 || len(runners) < 3 {
		t.Fatalf("found %d proxy and %d runner listen addresses in configs/", len(proxies), len(runners))
	}
	for name, addr := range runners {
		if p, clash := proxies[addr]; clash {
			t.Errorf("configs/%s listens on %s, as configs/%s does", name, addr, p)
		}
	}
}

// Several files: each is checked and reported, a bad one in the middle does
// not hide the ones after it, and the exit code says one failed.
func TestConfigCheckSeveralFiles(t *testing.T) {
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/sealrun-secrets.service")
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("storage:\n  bogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	good1, good2 := "../../configs/proxy.yaml", "../../configs/sealrun.yaml"
	code, out, errOut := runCLI(t, "", "config", "check", good1, bad, good2)
	if code != exitError {
		t.Errorf("exit %d, want 1", code)
	}
	if !strings.Contains(out, good1+": ok (proxy config)") || !strings.Contains(out, good2+": ok (storage config)") {
		t.Errorf("stdout %q: want both good files reported ok", out)
	}
	if !strings.Contains(errOut, bad) || !strings.Contains(errOut, "bogus") {
		t.Errorf("stderr %q: want the bad file and its unknown field named", errOut)
	}
	if code, out, _ := runCLI(t, "", "config", "check", good1, good2); code != exitOK || strings.Count(out, ": ok") != 2 {
		t.Errorf("two good files: exit %d, stdout %q", code, out)
	}
}

// Progress is for a person at a terminal: written to a pipe or a file it
// writes nothing, so a report piped on stays the report alone.
func TestProgressOnlyOnATerminal(t *testing.T) {
	var buf strings.Builder
	p := newProgress(&buf)
	p.update(5, 10)
	p.update(10, 10)
	p.finish()
	if buf.Len() != 0 {
		t.Errorf("progress written to a non-terminal: %q", buf.String())
	}
}
