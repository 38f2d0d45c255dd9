package runner

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestCommandExecutor(t *testing.T) {
	t.Setenv("SEALRUN_TEST_ALLOWED", "yes")
	t.Setenv("SEALRUN_TEST_SECRET", "must-not-pass")
	cases := []struct {
		name    string
		cfg     ExecutorConfig
		exit    int
		timeout bool
		output  string
		trunc   bool
	}{
		{"stdin and env allowlist", ExecutorConfig{Command: []string{"/bin/sh", "-c", `cat; echo " $SEALRUN_TEST_ALLOWED-$SEALRUN_TEST_SECRET-{{.Queue}}"`},
			Env: []string{"SEALRUN_TEST_ALLOWED"}}, 0, false, `{"x":1} yes--q1` + "\n", false},
		{"exit status", ExecutorConfig{Command: []string{"/bin/sh", "-c", "exit 3"}}, 3, false, "", false},
		{"output cap", ExecutorConfig{Command: []string{"/bin/sh", "-c", "yes | head -c 100000"}, OutputLimit: 10}, 0, false, "y\ny\ny\ny\ny\n", true},
		{"timeout kills the group", ExecutorConfig{Command: []string{"/bin/sh", "-c", "sleep 30 & wait"}, Timeout: 200 * time.Millisecond}, -1, true, "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := NewCommandExecutor(c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			res, err := e.Run(t.Context(), Job{Queue: "q1", ID: "id/../1", Request: []byte(`{"x":1}`)})
			if err != nil {
				t.Fatal(err)
			}
			if time.Since(start) > 10*time.Second {
				t.Fatalf("took %s", time.Since(start))
			}
			if res.ExitStatus != c.exit || res.TimedOut != c.timeout || string(res.Output) != c.output || res.Truncated != c.trunc {
				t.Fatalf("got exit=%d timeout=%v output=%q truncated=%v", res.ExitStatus, res.TimedOut, res.Output, res.Truncated)
			}
		})
	}
}

func TestCommandExecutorStartAndShutdown(t *testing.T) {
	e, _ := NewCommandExecutor(ExecutorConfig{Command: []string{"/nonexistent/bin"}})
	if _, err := e.Run(t.Context(), Job{ID: "x"}); !errors.Is(err, ErrStart) {
		t.Fatalf("missing binary: %v, want ErrStart", err)
	}
	e, _ = NewCommandExecutor(ExecutorConfig{Command: []string{"/bin/sleep", "30"}})
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := e.Run(ctx, Job{ID: "x"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown: %v, want the context's error", err)
	}
	if _, err := NewCommandExecutor(ExecutorConfig{Command: []string{"{{.Nope"}}); err == nil || !strings.Contains(err.Error(), "argument 0") {
		t.Fatalf("bad template: %v", err)
	}
}
