package runner

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestShutdownWithJobRunning cancels the runner while a job runs past the
// grace period: the job's whole process group is killed, its message goes
// back to the queue, its JobRecord stays unfinished, and Run returns nil.
func TestShutdownWithJobRunning(t *testing.T) {
	q := fixPrefix + "shutdown"
	pidFile := filepath.Join(t.TempDir(), "pid")
	h := newHarness(t, harnessOpt{queues: []string{q}, configure: func(c *Config) {
		c.ShutdownGrace = 300 * time.Millisecond
		// The grandchild sleep must die with the job, not outlive it.
		c.Executor = ExecutorConfig{Type: "command", Command: []string{"/bin/sh", "-c",
			"sleep 60 & echo $! > " + pidFile + "; wait"}}
	}})
	h.publish(q, sealStudio(t, fixSign))
	var pid int
	eventually(t, 10*time.Second, "job started", func() bool {
		b, err := os.ReadFile(pidFile)
		if err != nil || !strings.HasSuffix(string(b), "\n") {
			return false
		}
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return pid > 0
	})
	start := time.Now()
	if err := h.stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("shutdown took %s", d)
	}
	if alive(pid) {
		t.Errorf("grandchild %d survived the shutdown", pid)
	}
	if n := h.queueLen(q); n != 1 {
		t.Fatalf("%d messages in the queue after shutdown, want the job's message back", n)
	}
	if h.count(outcomeShutdown) != 1 {
		t.Errorf("shutdown outcome = %d, want 1", h.count(outcomeShutdown))
	}
	for _, j := range h.jobs() {
		if j.State != StateRunning {
			t.Errorf("JobRecord state %q, want %q (so the redelivery takes it over)", j.State, StateRunning)
		}
	}
}

// alive reports whether pid runs; a zombie (killed, waiting for a reaper
// that containers' init may never be) does not count.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z")
}
