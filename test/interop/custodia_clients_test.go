package interop

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/testenv"
)

// custodiaCLI is Debian's custodia-cli (package custodia-cli).
const custodiaCLI = "/usr/bin/custodia-cli"

// endpoint is a server the clients talk to, with its credential.
type endpoint struct{ name, sock, id, key string }

// bothEnds starts real Custodia 0.6 and a sealrun proxy configured as
// CPD-101 runs it (sharing Custodia's master key, as a migrated deployment
// does), each empty.
func bothEnds(t *testing.T) [2]endpoint {
	cust := testenv.Custodia(t)
	seal, _ := sealrunCPD(t, cust.MasterKey)
	return [2]endpoint{{"Custodia", cust.Socket, cust.ID, cust.Key}, {"sealrun", seal.Socket, seal.ID, seal.Key}}
}

// Custodia's own Python client (python3-custodia) sets, gets, lists,
// creates and deletes containers and values, and meets every error, with
// the same results against the sealrun proxy as against real Custodia.
func TestCustodiaPythonClient(t *testing.T) {
	py := need(t, testenv.DebianPython)
	if out, err := exec.Command(py, "-c", "import custodia.client").CombinedOutput(); err != nil {
		t.Fatalf("python3-custodia is not installed (%v: %s): run scripts/install-deps.sh", err, out)
	}
	var transcripts [2]string
	for i, e := range bothEnds(t) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		out, err := exec.CommandContext(ctx, py, script("custodia_pyclient.py"), e.sock, e.id, e.key).Output()
		cancel()
		if err != nil {
			var ee *exec.ExitError
			errors.As(err, &ee)
			t.Fatalf("Custodia's Python client against %s: %v\n%s%s", e.name, err, out, stderrOf(ee))
		}
		transcripts[i] = string(out)
	}
	if transcripts[0] != transcripts[1] {
		t.Fatalf("Custodia's Python client saw different results:\nCustodia: %s\nsealrun:  %s", transcripts[0], transcripts[1])
	}
	// Equal is not enough (both could fail alike): the steps did what
	// they say.
	var steps [][]any
	if err := json.Unmarshal([]byte(transcripts[1]), &steps); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range steps {
		b, _ := json.Marshal(s[1:])
		got[s[0].(string)] = string(b)
	}
	for step, want := range map[string]string{
		"set app/db":              `["ok",null]`,
		"get app/db":              `["ok","py-secret-é ✓"]`,
		"set app/db again":        `["http",409]`,
		"ls app":                  `["ok",["db","empty","sub/","sub/k"]]`,
		"ls app/sub":              `["ok",["k"]]`,
		"get app/missing":         `["http",404]`,
		"set outside a container": `["http",403]`,
		"get with a wrong key":    `["http",403]`,
		"ls without credential":   `["http",403]`,
		"rmdir app (not empty)":   `["http",409]`,
		"rmdir app":               `["ok",null]`,
		"ls app deleted":          `["http",404]`,
	} {
		if got[step] != want {
			t.Errorf("%s: %s, want %s", step, got[step], want)
		}
	}
}

// Debian's custodia-cli, pointed at the proxy's socket with CPD-101's
// headers, prints and exits as it does against real Custodia.
func TestCustodiaCLI(t *testing.T) {
	cli := need(t, custodiaCLI)
	type step struct {
		args     []string
		wrongKey bool
	}
	steps := []step{
		{args: []string{"mkdir", "app"}},
		{args: []string{"set", "app/db", "cli-secret ✓"}},
		{args: []string{"set", "app/db", "again"}},
		{args: []string{"get", "app/db"}},
		{args: []string{"mkdir", "app/sub"}},
		{args: []string{"set", "app/sub/k", "nested"}},
		{args: []string{"ls", "app/sub"}},
		{args: []string{"get", "app/missing"}},
		{args: []string{"set", "top", "x"}},
		{args: []string{"get", "app/db"}, wrongKey: true},
		{args: []string{"rmdir", "app"}},
		{args: []string{"del", "app/sub/k"}},
		{args: []string{"rmdir", "app/sub"}},
		{args: []string{"del", "app/db"}},
		{args: []string{"del", "app/db"}},
		{args: []string{"ls", "app"}},
		{args: []string{"rmdir", "app"}},
		{args: []string{"ls", "app"}},
	}
	// The socket path is in custodia-cli's error messages.
	sockURL := regexp.MustCompile(`http\+unix://[^/\s]+`)
	// The two servers run their steps at once (each in order): every step
	// starts a Python interpreter.
	var results [2][]string
	var errs [2]error
	var wg sync.WaitGroup
	for i, e := range bothEnds(t) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, s := range steps {
				key := e.key
				if s.wrongKey {
					key = "wrong-" + key[:4]
				}
				args := append([]string{"--server", e.sock, "--header", cpdIDHeader + "=" + e.id, "--header", cpdKeyHeader + "=" + key}, s.args...)
				ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
				cmd := exec.CommandContext(ctx, cli, args...)
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				cancel()
				code := 0
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					code = ee.ExitCode()
				} else if err != nil {
					errs[i] = fmt.Errorf("custodia-cli %v against %s: %w", s.args, e.name, err)
					return
				}
				results[i] = append(results[i], strings.Join(s.args, " ")+" -> exit "+strconv.Itoa(code)+": "+stdout.String()+"| "+sockURL.ReplaceAllString(withoutWarnings(stderr.String()), "http+unix://SOCK"))
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs[:]...); err != nil {
		t.Fatal(err)
	}
	for i := range steps {
		if results[0][i] != results[1][i] {
			t.Errorf("custodia-cli differs:\nCustodia: %s\nsealrun:  %s", results[0][i], results[1][i])
		}
	}
	// And it worked, not just failed alike.
	for i, want := range map[int]string{
		1:  "exit 0: | ",
		2:  "exit 1: | ERROR",
		3:  "exit 0: cli-secret ✓\n| ",
		6:  "exit 0: k\n| ",
		7:  "404 Client Error",
		8:  "403 Client Error",
		9:  "403 Client Error",
		10: "409 Client Error",
		16: "exit 0: | ",
		17: "404 Client Error",
	} {
		if !strings.Contains(results[1][i], want) {
			t.Errorf("sealrun: %q, want it to contain %q", results[1][i], want)
		}
	}
	t.Logf("custodia-cli against sealrun:\n%s", strings.Join(results[1], "\n"))
}

// withoutWarnings drops custodia-cli's ProvisionalWarning (two lines).
func withoutWarnings(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, "ProvisionalWarning") && !strings.Contains(l, "__import__(self.module_name") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func stderrOf(ee *exec.ExitError) string {
	if ee == nil {
		return ""
	}
	return string(ee.Stderr)
}
