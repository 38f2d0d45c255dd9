package logfmt

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// keys decodes one JSON line, failing on a key that appears twice.
func keys(t *testing.T, line string) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %q", line)
	}
	out := map[string]any{}
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		if _, dup := out[k.(string)]; dup {
			t.Fatalf("key %q twice on one line: %s", k, line)
		}
		out[k.(string)] = v
	}
	return out
}

func TestEachKeyOnceDurationsAsStrings(t *testing.T) {
	var buf bytes.Buffer
	log := New(&buf, slog.LevelInfo).With("queue", "a", "suite", "studioml")
	log.With("suite", "hpke").Warn("x", "suite", "last", "retry_in", 1500*time.Millisecond, "n", 3,
		slog.Group("g", "d", time.Second))
	log.WithGroup("grp").Info("y", "d", 2*time.Second)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2: %s", len(lines), buf.String())
	}
	m := keys(t, lines[0])
	if m["suite"] != "last" || m["queue"] != "a" || m["retry_in"] != "1.5s" || m["n"] != 3.0 {
		t.Errorf("line %s: want suite=last queue=a retry_in=1.5s n=3", lines[0])
	}
	if g, _ := m["g"].(map[string]any); g["d"] != "1s" {
		t.Errorf("grouped duration not a string: %s", lines[0])
	}
	m = keys(t, lines[1])
	if g, _ := m["grp"].(map[string]any); g["d"] != "2s" || m["queue"] != "a" {
		t.Errorf("line %s: want queue outside the group and grp.d=2s", lines[1])
	}
}
