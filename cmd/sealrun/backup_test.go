package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/storage/overlay"
)

// shareFiles splits a fresh master key 3-of-5 with the CLI.
func shareFiles(t *testing.T, kid string) (key []byte, files []string) {
	t.Helper()
	dir := t.TempDir()
	keyPath := filepath.Join(dir, kid+".key")
	if _, err := overlay.GenerateKeyFile(keyPath, kid); err != nil {
		t.Fatal(err)
	}
	key, _ = os.ReadFile(keyPath)
	code, out, errOut := runCLI(t, "", "backup", "split", "--key", keyPath, "--shares", "5", "--threshold", "3", "--out", filepath.Join(dir, "shares"))
	if code != 0 {
		t.Fatalf("split: %d %s", code, errOut)
	}
	// Nothing secret reaches the terminal: no share line, no key byte.
	for _, f := range mustGlob(t, filepath.Join(dir, "shares", "*.txt")) {
		b, _ := os.ReadFile(f)
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "0") && strings.Contains(out+errOut, strings.Fields(l)[1]) {
				t.Fatalf("split printed share material: %s", out)
			}
		}
		files = append(files, f)
	}
	if bytes.Contains([]byte(out+errOut), key[5:20]) {
		t.Fatal("split printed the key")
	}
	if len(files) != 5 || len(mustGlob(t, filepath.Join(dir, "shares", "*.png"))) != 5 {
		t.Fatalf("share files: %v", files)
	}
	return key, files
}

func mustGlob(t *testing.T, pat string) []string {
	m, err := filepath.Glob(pat)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestBackupSplitRestoreCLI(t *testing.T) {
	key, files := shareFiles(t, "master-9")
	out := filepath.Join(t.TempDir(), "restored.key")
	code, stdout, errOut := runCLI(t, "", "backup", "restore", "--out", out, files[4], files[0], files[2])
	if code != 0 || !strings.Contains(stdout, "restored key master-9 to") {
		t.Fatalf("restore: %d %s %s", code, stdout, errOut)
	}
	got, _ := os.ReadFile(out)
	st, _ := os.Stat(out)
	if !bytes.Equal(got, key) || st.Mode().Perm() != 0o600 {
		t.Fatalf("restored file differs or mode %v", st.Mode())
	}
	k, err := overlay.LoadKeyFile(out, false)
	if err != nil || k.ID != "master-9" {
		t.Fatalf("restored key: %v %v", k, err)
	}
	// Typed on stdin: only the numbered lines, shares one after another.
	var typed strings.Builder
	for _, f := range files[1:4] {
		b, _ := os.ReadFile(f)
		for _, l := range strings.Split(string(b), "\n") {
			if len(l) > 2 && l[0] == '0' {
				typed.WriteString(strings.ToLower(l) + "\n")
			}
		}
	}
	out2 := filepath.Join(t.TempDir(), "typed.key")
	if code, stdout, errOut := runCLI(t, typed.String(), "backup", "restore", "--out", out2, "-"); code != 0 {
		t.Fatalf("restore from stdin: %d %s %s", code, stdout, errOut)
	}
	if got, _ := os.ReadFile(out2); !bytes.Equal(got, key) {
		t.Fatal("typed restore differs")
	}
	// An existing key file is never replaced.
	if code, _, errOut := runCLI(t, "", "backup", "restore", "--out", out, files[0], files[1], files[2]); code != 1 || !strings.Contains(errOut, "exists") {
		t.Fatalf("restore over a file: %d %s", code, errOut)
	}
}

func TestBackupRestoreRefusesCLI(t *testing.T) {
	_, files := shareFiles(t, "master-a")
	_, other := shareFiles(t, "master-b")
	b, _ := os.ReadFile(files[2])
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "03 ") {
			f := []byte(l)
			if f[5] == 'Z' {
				f[5] = 'Y'
			} else {
				f[5] = 'Z'
			}
			lines[i] = string(f)
		}
	}
	typo := filepath.Join(t.TempDir(), "typo.txt")
	_ = os.WriteFile(typo, []byte(strings.Join(lines, "\n")), 0o600)
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"too few", files[:2], "needs 3 shares of 5, got 2"},
		{"different keys", []string{files[0], files[1], other[2]}, "are of different keys"},
		{"duplicate", []string{files[0], files[1], files[1]}, "is given twice"},
		{"typo", []string{files[0], files[1], typo}, "typo.txt, share 1, line 03: the line check does not match"},
	} {
		out := filepath.Join(t.TempDir(), "k")
		code, _, errOut := runCLI(t, "", append([]string{"backup", "restore", "--out", out}, c.args...)...)
		if code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, stderr %q, want %q", c.name, code, errOut, c.want)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("%s: a key file was written", c.name)
		}
	}
	for _, args := range [][]string{
		{"backup"},
		{"backup", "split", "--out", "x"},
		{"backup", "split", "--key", "k", "--deks", "--out", "x"},
		{"backup", "restore", "--out", "x"},
		{"backup", "store", "--config", "c"},
		{"backup", "load", "--in", "c"},
	} {
		if code, _, errOut := runCLI(t, "", args...); code != exitUsage || errOut == "" {
			t.Errorf("%v: exit %d %q, want 2", args, code, errOut)
		}
	}
	for _, v := range []string{"split", "restore", "store", "load"} {
		if code, out, _ := runCLI(t, "", "backup", v, "--help"); code != 0 || !strings.Contains(out, "Examples:") {
			t.Errorf("backup %s --help: %d %s", v, code, out)
		}
	}
}
