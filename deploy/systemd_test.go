package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var units = []string{"sealrun-secrets.socket", "sealrun-secrets.service", "sealrun-runner.service"}

// maxExposure is the target for systemd-analyze security.
const maxExposure = 2.0

// unitRoot builds a throwaway root holding the units under test, an
// executable where ExecStart= points (verify checks it exists), and empty
// stand-ins for the standard targets the units' default dependencies name,
// so the host's own unit files play no part in the result.
func unitRoot(t *testing.T, edit func(name, text string) string) string {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatal("systemd-analyze not found: install Debian's systemd package (make deps does)")
	}
	root := t.TempDir()
	etc := filepath.Join(root, "etc/systemd/system")
	lib := filepath.Join(root, "usr/lib/systemd/system")
	bin := filepath.Join(root, "usr/local/bin")
	for _, d := range []string{etc, lib, bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(bin, "sealrun"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"sysinit.target", "basic.target", "shutdown.target", "sockets.target", "network-online.target", "multi-user.target"} {
		if err := os.WriteFile(filepath.Join(lib, target), []byte("[Unit]\nDescription="+target+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range units {
		b, err := os.ReadFile(filepath.Join("systemd", u))
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		if edit != nil {
			text = edit(u, text)
		}
		if err := os.WriteFile(filepath.Join(etc, u), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func verify(root string) (string, error) {
	args := []string{"verify", "--man=no", "--root=" + root}
	for _, u := range units {
		args = append(args, filepath.Join(root, "etc/systemd/system", u))
	}
	out, err := exec.Command("systemd-analyze", args...).CombinedOutput()
	return string(out), err
}

func TestSystemdVerify(t *testing.T) {
	out, err := verify(unitRoot(t, nil))
	if err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The check has teeth: a misspelt directive is reported.
	out, _ = verify(unitRoot(t, func(name, text string) string {
		return strings.Replace(text, "NoNewPrivileges=yes", "NoNewPrivilege=yes", 1)
	}))
	if !strings.Contains(out, "NoNewPrivilege") {
		t.Fatalf("verify did not report a misspelt directive:\n%s", out)
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for (\S+): ([0-9.]+)`)

// TestSystemdSecurity scores each service with systemd-analyze security in
// offline mode (systemd >= 250): the unit files as written, not a running
// system.
func TestSystemdSecurity(t *testing.T) {
	root := unitRoot(t, nil)
	for _, u := range units {
		if !strings.HasSuffix(u, ".service") {
			continue
		}
		out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--no-pager", "--root="+root, u).CombinedOutput()
		m := exposureRE.FindStringSubmatch(string(out))
		if m == nil {
			t.Fatalf("systemd-analyze security %s: %v\n%s", u, err, out)
		}
		score, _ := strconv.ParseFloat(m[2], 64)
		t.Logf("%s: exposure %.1f", u, score)
		if score > maxExposure {
			t.Errorf("%s: exposure %.1f, want <= %.1f\n%s", u, score, maxExposure, out)
		}
	}
}
