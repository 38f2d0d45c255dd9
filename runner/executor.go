package runner

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/sealrun/sealrun/envelope"
)

// Job is one opened request handed to an Executor.
type Job struct {
	Queue   string
	ID      string // the message id (see messageID)
	Suite   envelope.Suite
	Request []byte // the Request JSON
}

// Result is what an executor reports about a job that ran.
type Result struct {
	ExitStatus int
	TimedOut   bool
	// Output is the captured stdout and stderr, at most the configured cap.
	Output    []byte
	Truncated bool
	Duration  time.Duration
}

// ErrStart wraps executor failures that happen before the job runs (the
// command cannot start, no working directory): transient, the message is
// requeued.
var ErrStart = errors.New("executor could not start the job")

// Executor runs jobs. Run returns a Result for every job that ran, whatever
// its exit status; an error wrapping ErrStart if it could not start; and
// ctx's error if ctx ended (shutdown) and the job was killed, in which case
// the message is requeued.
type Executor interface {
	Run(ctx context.Context, job Job) (*Result, error)
}

// NoopExecutor runs nothing and reports success; for benchmarks and for
// deployments that only verify messages.
type NoopExecutor struct{}

// Run implements Executor.
func (NoopExecutor) Run(ctx context.Context, job Job) (*Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return &Result{}, nil
}

// CommandExecutor runs a command per job: argv from a template, a fresh
// working directory, only allow-listed environment variables, the Request
// JSON on stdin, a timeout and an output cap. The command runs in its own
// process group, and the whole group is killed on timeout or shutdown, so no
// grandchild outlives its job.
type CommandExecutor struct {
	argv        []*template.Template
	workRoot    string
	env         []string
	timeout     time.Duration
	outputLimit int
}

// NewCommandExecutor builds a CommandExecutor from the configuration.
func NewCommandExecutor(c ExecutorConfig) (*CommandExecutor, error) {
	argv, err := parseArgv(c.Command)
	if err != nil {
		return nil, fmt.Errorf("executor.command: %w", err)
	}
	e := &CommandExecutor{argv: argv, workRoot: c.WorkRoot, env: c.Env, timeout: c.Timeout, outputLimit: c.OutputLimit}
	if e.workRoot == "" {
		e.workRoot = os.TempDir()
	}
	if err := prepareWorkRoot(e.workRoot); err != nil {
		return nil, err
	}
	if e.timeout <= 0 {
		e.timeout = time.Hour
	}
	if e.outputLimit <= 0 {
		e.outputLimit = 64 << 10
	}
	return e, nil
}

// prepareWorkRoot makes sure jobs can get a working directory under root,
// at start: found missing at the first job, every message would be
// requeued forever behind a runner that looks ready.
func prepareWorkRoot(root string) error {
	fi, err := os.Stat(root)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		// Owner only: job directories hold decrypted requests.
		if err := os.MkdirAll(root, 0o700); err != nil {
			return fmt.Errorf("executor.work_root %s does not exist and cannot be created: %w; create it (mode 0700, owned by the runner's user) or point work_root at a writable directory", root, err)
		}
		fi, err = os.Stat(root)
	}
	if err != nil {
		return fmt.Errorf("executor.work_root %s: %w", root, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("executor.work_root %s is not a directory; point work_root at a directory", root)
	}
	probe, err := os.MkdirTemp(root, ".sealrun-probe-")
	if err != nil {
		return fmt.Errorf("executor.work_root %s is not writable: %w; give the runner's user write access or point work_root elsewhere", root, err)
	}
	return os.Remove(probe)
}

func parseArgv(cmd []string) ([]*template.Template, error) {
	if len(cmd) == 0 || cmd[0] == "" {
		return nil, errors.New("empty command")
	}
	out := make([]*template.Template, len(cmd))
	for i, a := range cmd {
		t, err := template.New(fmt.Sprintf("arg%d", i)).Option("missingkey=error").Parse(a)
		if err != nil {
			return nil, fmt.Errorf("argument %d: %w", i, err)
		}
		out[i] = t
	}
	return out, nil
}

// unsafeName matches what may not appear in a directory name built from a
// message id.
var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]`)

// Run implements Executor.
func (e *CommandExecutor) Run(ctx context.Context, job Job) (*Result, error) {
	name := unsafeName.ReplaceAllString(job.ID, "_")
	if len(name) > 64 {
		name = name[:64]
	}
	wd, err := os.MkdirTemp(e.workRoot, "job-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("%w: working directory: %w", ErrStart, err)
	}
	defer os.RemoveAll(wd)
	vars := struct{ Queue, ID, Suite, WorkDir string }{job.Queue, job.ID, string(job.Suite), wd}
	argv := make([]string, len(e.argv))
	for i, t := range e.argv {
		var b strings.Builder
		if err := t.Execute(&b, vars); err != nil {
			return nil, fmt.Errorf("%w: argv template: %w", ErrStart, err)
		}
		argv[i] = b.String()
	}
	env := []string{"SEALRUN_QUEUE=" + job.Queue, "SEALRUN_MESSAGE_ID=" + job.ID, "SEALRUN_WORKDIR=" + wd}
	for _, k := range e.env {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	// The timeout is ours; ctx ending means shutdown. They end differently:
	// a timeout is the job's result, a shutdown gives the message back.
	tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.timeout)
	defer cancel()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = wd
	cmd.Env = env
	cmd.Stdin = bytes.NewReader(job.Request)
	out := &capped{limit: e.outputLimit}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Pipes stay open while any grandchild holds them: bound the wait.
	cmd.WaitDelay = 2 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrStart, filepath.Base(argv[0]), err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var werr error
	stopped := false
	select {
	case werr = <-waited:
	case <-tctx.Done():
		killGroup(cmd)
		werr = <-waited
	case <-ctx.Done():
		stopped = true
		killGroup(cmd)
		werr = <-waited
	}
	// Whatever the command left behind in its group goes too.
	killGroup(cmd)
	if stopped {
		return nil, fmt.Errorf("job %s stopped by shutdown: %w", job.ID, ctx.Err())
	}
	res := &Result{Output: out.bytes(), Truncated: out.truncated(), Duration: time.Since(start)}
	res.TimedOut = tctx.Err() != nil
	var exitErr *exec.ExitError
	switch {
	case werr == nil:
	case errors.As(werr, &exitErr):
		res.ExitStatus = exitErr.ExitCode() // -1 when killed by a signal
	case errors.Is(werr, exec.ErrWaitDelay):
		// Exited, but a descendant kept the output open until killed.
		res.ExitStatus = cmd.ProcessState.ExitCode()
	default:
		res.ExitStatus = -1
	}
	if res.TimedOut && res.ExitStatus == 0 {
		res.ExitStatus = -1
	}
	return res, nil
}

// killGroup SIGKILLs the command's whole process group.
func killGroup(cmd *exec.Cmd) {
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

// capped keeps the first limit bytes written to it and counts the rest.
type capped struct {
	mu      sync.Mutex
	limit   int
	buf     []byte
	dropped int64
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	room := c.limit - len(c.buf)
	if room > len(p) {
		room = len(p)
	}
	if room > 0 {
		c.buf = append(c.buf, p[:room]...)
	}
	c.dropped += int64(len(p) - room)
	return len(p), nil
}

func (c *capped) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]byte(nil), c.buf...)
}

func (c *capped) truncated() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dropped > 0
}
