package embedded

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"go.uber.org/zap"
)

// etcd's warnings and errors reach the component's slog with their fields;
// its info and debug chatter does not.
func TestZapToSlog(t *testing.T) {
	var buf bytes.Buffer
	log := zapToSlog(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	log.Debug("raft tick")
	log.Info("applied entries")
	log.Named("raft").With(zap.String("member", "m1")).Warn("slow fdatasync", zap.Duration("took", 2e9), zap.Error(errors.New("disk busy")))
	log.Error("lost leader")
	var got []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		got = append(got, m)
	}
	if len(got) != 2 {
		t.Fatalf("want the warning and the error only, got %d records: %s", len(got), buf.String())
	}
	w := got[0]
	if w["level"] != "WARN" || w["msg"] != "slow fdatasync" || w["component"] != "embedded-etcd" ||
		w["logger"] != "raft" || w["member"] != "m1" || w["error"] != "disk busy" || w["took"] != float64(2e9) {
		t.Errorf("warning: %v", w)
	}
	if got[1]["level"] != "ERROR" || got[1]["msg"] != "lost leader" {
		t.Errorf("error: %v", got[1])
	}
}

// A component's level applies: a logger at error drops etcd's warnings.
func TestZapToSlogLevel(t *testing.T) {
	var buf bytes.Buffer
	log := zapToSlog(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError})))
	log.Warn("slow fdatasync")
	if buf.Len() != 0 {
		t.Errorf("warning logged at level error: %s", buf.String())
	}
	log.Error("lost leader")
	if !strings.Contains(buf.String(), "lost leader") {
		t.Errorf("error not logged: %q", buf.String())
	}
}
