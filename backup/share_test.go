package backup

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/storage/overlay"
)

func testKey(t *testing.T) ([]byte, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "master.key")
	k, err := overlay.GenerateKeyFile(p, "master-7")
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data, k.ID
}

func splitParse(t *testing.T, secret []byte, id string, n, k int) []Share {
	t.Helper()
	shares, err := Split(secret, id, n, k)
	if err != nil {
		t.Fatal(err)
	}
	// Every share goes through its printed form, as an operator's would.
	out := make([]Share, n)
	for i, s := range shares {
		p, err := Parse(bytes.NewReader(s.Text()), "share")
		if err != nil {
			t.Fatalf("parse share %d: %v", i+1, err)
		}
		if len(p) != 1 {
			t.Fatalf("share %d parsed to %d shares", i+1, len(p))
		}
		out[i] = p[0]
	}
	return out
}

func TestSplitCombineEveryThreeOfFive(t *testing.T) {
	key, id := testKey(t)
	if KeyID(key) != id || id != "master-7" {
		t.Fatalf("KeyID = %q, want %q", KeyID(key), id)
	}
	shares := splitParse(t, key, id, 5, 3)
	for a := 0; a < 5; a++ {
		for b := a + 1; b < 5; b++ {
			for c := b + 1; c < 5; c++ {
				got, err := Combine([]Share{shares[c], shares[a], shares[b]})
				if err != nil {
					t.Fatalf("shares %d,%d,%d: %v", a+1, b+1, c+1, err)
				}
				if !bytes.Equal(got, key) {
					t.Fatalf("shares %d,%d,%d restored a different file", a+1, b+1, c+1)
				}
			}
		}
	}
	if got, err := Combine(shares); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("all five: %v", err)
	}
}

func TestSplitAnyFileSize(t *testing.T) {
	for _, n := range []int{1, 30, 31, 32, 62, 63, 500, MaxSecret} {
		secret := make([]byte, n)
		_, _ = rand.Read(secret)
		shares := splitParse(t, secret, KeyID(secret), 3, 2)
		got, err := Combine(shares[1:])
		if err != nil || !bytes.Equal(got, secret) {
			t.Fatalf("%d bytes: %v", n, err)
		}
		if _, err := shares[0].QR(); err != nil {
			t.Fatalf("%d bytes: QR code: %v", n, err)
		}
	}
}

func TestCombineRefuses(t *testing.T) {
	key, id := testKey(t)
	shares := splitParse(t, key, id, 5, 3)
	other := splitParse(t, key, id, 5, 3) // same key, another split
	key2, id2 := testKey(t)
	_ = id2
	diffKey := splitParse(t, key2, "master-8", 5, 3)
	corrupt := shares[2]
	corrupt.value = append([]byte(nil), corrupt.value...)
	corrupt.value[5] ^= 1
	for _, c := range []struct {
		name   string
		shares []Share
		want   string
	}{
		{"too few", shares[:2], "needs 3 shares of 5, got 2: find 1 more"},
		{"duplicate", []Share{shares[0], shares[1], shares[1]}, "share 2 of key master-7 is given twice"},
		{"different keys", []Share{shares[0], shares[1], diffKey[2]}, "are of different keys"},
		{"different splits", []Share{shares[0], shares[1], other[2]}, "different splits"},
		{"corrupted", []Share{shares[0], shares[1], corrupt}, "corrupted"},
		{"corrupted extra", []Share{shares[0], shares[1], shares[3], corrupt}, "share 3 of 5 (threshold 3) of key master-7 does not agree"},
		{"none", nil, "no shares"},
	} {
		_, err := Combine(c.shares)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}

func TestSplitRefuses(t *testing.T) {
	for _, c := range []struct {
		n, k int
		data []byte
		want string
	}{
		{5, 1, []byte("k"), "at least 2"},
		{2, 3, []byte("k"), "at least the threshold"},
		{256, 3, []byte("k"), "at most 255"},
		{5, 3, nil, "empty"},
		{5, 3, make([]byte, MaxSecret+1), "at most 1024"},
	} {
		if _, err := Split(c.data, "id", c.n, c.k); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("split %d/%d: %v, want %q", c.n, c.k, err, c.want)
		}
	}
}

// A typo is caught and located: every single-character change of a line
// is reported by that line's number.
func TestParseLocatesTypos(t *testing.T) {
	key, id := testKey(t)
	shares, err := Split(key, id, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(shares[0].Lines()), "\n")
	for ln, line := range lines {
		for pos := 4; pos < len(line); pos++ {
			if line[pos] == ' ' {
				continue
			}
			for _, sub := range []byte("0Z") {
				if line[pos] == sub {
					continue
				}
				mut := append([]string(nil), lines...)
				mut[ln] = line[:pos] + string(sub) + line[pos+1:]
				_, err := Parse(strings.NewReader(strings.Join(mut, "\n")), "typed")
				want := fmt.Sprintf("line %02d", ln+1)
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("typo at line %d col %d: error %v, want it to name %s", ln+1, pos, err, want)
				}
			}
		}
	}
	// Look-alikes, lower case and missing spaces between groups are fine.
	var typed []string
	for _, l := range lines {
		f := strings.Fields(l)
		mid := strings.ToLower(strings.ReplaceAll(strings.Join(f[1:len(f)-1], ""), "0", "O"))
		typed = append(typed, f[0]+" "+mid+" "+strings.ToLower(f[len(f)-1]))
	}
	p, err := Parse(strings.NewReader(strings.Join(typed, "\n")), "typed")
	if err != nil || len(p) != 1 || p[0].Index != 1 {
		t.Fatalf("lenient typing: %v", err)
	}
}

func TestParseRefuses(t *testing.T) {
	key, id := testKey(t)
	shares, err := Split(key, id, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(shares[0].Lines()), "\n")
	other := strings.Split(strings.TrimSpace(shares[1].Lines()), "\n")
	join := func(l ...string) string { return strings.Join(l, "\n") }
	for _, c := range []struct{ name, in, want string }{
		{"missing line", join(append(lines[:2:2], lines[3:]...)...), "line 04 where line 03 was expected"},
		{"repeated line", join(append(lines[:3:3], lines[2:]...)...), "line 03 where line 04 was expected"},
		{"last line missing", join(lines[:len(lines)-1]...), "share 1"},
		{"mixed shares", join(append(append([]string(nil), lines[:2]...), other[2:]...)...), "lines of different shares are mixed"},
		{"no lines", "hello\n", "no share lines"},
		{"future format", "format: sealrun-share/2\n" + join(lines...), "this sealrun reads sealrun-share/1"},
		{"bad alphabet", join(append([]string{lines[0][:4] + "U" + lines[0][5:]}, lines[1:]...)...), "not in the share alphabet"},
		{"no check", "01 ABCDE", "want the line number"},
		{"starts mid-share", join(lines[1:]...), "comes before a line 01"},
	} {
		_, err := Parse(strings.NewReader(c.in), "typed")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.name, err, c.want)
		}
	}
}

func TestShareRedacts(t *testing.T) {
	key, id := testKey(t)
	shares, err := Split(key, id, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	lines := shares[0].Lines()
	groups := strings.Fields(strings.Split(lines, "\n")[1])[1:3]
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%q"} {
		out := fmt.Sprintf(verb, shares[0])
		for _, g := range groups {
			if strings.Contains(strings.ToUpper(out), g) {
				t.Fatalf("%s prints share characters: %s", verb, out)
			}
		}
		if strings.Contains(out, fmt.Sprintf("%x", shares[0].value[:8])) {
			t.Fatalf("%s prints the share value", verb)
		}
	}
}

func TestWriteShares(t *testing.T) {
	key, id := testKey(t)
	shares, err := Split(key, id, 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "shares")
	paths, err := WriteShares(dir, shares)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 6 {
		t.Fatalf("wrote %v", paths)
	}
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v", p, st.Mode())
		}
		if strings.HasSuffix(p, ".png") {
			b, _ := os.ReadFile(p)
			if !bytes.HasPrefix(b, []byte("\x89PNG")) {
				t.Fatalf("%s is not a PNG", p)
			}
		}
	}
	if _, err := WriteShares(dir, shares); err == nil || !strings.Contains(err.Error(), "never overwritten") {
		t.Fatalf("second write: %v", err)
	}
}
