// Command sealrun runs queued work whose keys live in a pluggable secrets
// backend. One binary, one pflag FlagSet per subcommand.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/spf13/pflag"
)

// Exit codes shared by every subcommand.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

// stdio is what a subcommand may touch of the process, so tests can run
// commands in-process with buffers.
type stdio struct {
	in       io.Reader
	out, err io.Writer
}

// command is one subcommand. Run parses its own FlagSet (see newFlags) and
// returns the process exit code.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, s stdio, args []string) int
}

// commands is the explicit list of subcommands; keep it sorted by name.
var commands = []command{
	{name: "audit", summary: "verify the secrets proxy audit log chain", run: runAudit},
	{name: "backup", summary: "split keys into printable shares, back up and load the encrypted store", run: runBackup},
	{name: "config", summary: "check configuration files and print complete defaults", run: runConfig},
	{name: "keygen", summary: "generate message, signing and HPKE key pairs", run: runKeygen},
	{name: "migrate", summary: "import existing secrets (StudioML, kubectl, etcd, Custodia, Vault) into the store", run: runMigrate},
	{name: "open", summary: "verify and decrypt a queue message read on stdin", run: runOpen},
	{name: "responses", summary: "read and open the sealed reports for a queue", run: runResponses},
	{name: "rotate", summary: "rotate the overlay master key or the Transit KEK online", run: runRotate},
	{name: "runner", summary: "consume sealed work from RabbitMQ queues and run it", run: runRunner},
	{name: "seal", summary: "encrypt and sign a Request JSON read on stdin", run: runSeal},
	{name: "secrets", summary: "store and read secrets through the storage backends", run: runSecrets},
	{name: "send", summary: "seal a Request and publish it to a runner's queue", run: runSend},
	{name: "version", summary: "print the sealrun version", run: runVersion},
}

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := dispatch(ctx, stdio{in: os.Stdin, out: os.Stdout, err: os.Stderr}, os.Args[1:])
	stop()
	os.Exit(code)
}

func dispatch(ctx context.Context, s stdio, args []string) int {
	if len(args) == 0 {
		topUsage(s.err)
		return exitUsage
	}
	name := args[0]
	switch name {
	case "help", "-h", "--help":
		if len(args) > 1 {
			// "sealrun help seal" is the same as "sealrun seal --help".
			return dispatch(ctx, s, []string{args[1], "--help"})
		}
		topUsage(s.out)
		return exitOK
	case "--version":
		name = "version"
	}
	for _, c := range commands {
		if c.name == name {
			return c.run(ctx, s, args[1:])
		}
	}
	fmt.Fprintf(s.err, "sealrun: unknown command %q\n\n", name)
	topUsage(s.err)
	return exitUsage
}

func topUsage(w io.Writer) {
	fmt.Fprint(w, `sealrun runs queued work whose keys live in a pluggable secrets backend.

Usage:
  sealrun <command> [flags]

Commands:
`)
	cs := append([]command(nil), commands...)
	sort.Slice(cs, func(i, j int) bool { return cs[i].name < cs[j].name })
	for _, c := range cs {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
Run "sealrun <command> --help" (or "sealrun help <command>") for a command's
flags and examples.
`)
}

// helps holds each FlagSet's full help printer. pflag calls fs.Usage itself on
// any parse error, so fs.Usage stays silent and parse decides what to print.
var helps sync.Map // *pflag.FlagSet -> func()

// newFlags builds a subcommand FlagSet; --help prints usage, flags and
// examples on stdout.
func newFlags(s stdio, use, summary, examples string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(strings.Fields(use)[0], pflag.ContinueOnError)
	if f := strings.Fields(use); len(f) > 1 && !strings.HasPrefix(f[1], "-") && !strings.Contains(f[1], "|") && f[1] == strings.ToLower(f[1]) && !strings.ContainsAny(f[1], "<[") {
		fs = pflag.NewFlagSet(f[0]+" "+f[1], pflag.ContinueOnError)
	}
	fs.SetOutput(io.Discard)
	fs.SortFlags = false
	fs.Usage = func() {}
	helps.Store(fs, func() {
		w := s.out
		fmt.Fprintf(w, "%s\n\nUsage:\n  sealrun %s\n", summary, use)
		if fs.HasFlags() {
			fmt.Fprintf(w, "\nFlags:\n%s", fs.FlagUsages())
		}
		if examples != "" {
			fmt.Fprintf(w, "\nExamples:\n%s\n", strings.TrimRight(examples, "\n"))
		}
	})
	return fs
}

// parse parses args; ok is false when the command must return code at once
// (0 after --help, 2 on a usage error).
func parse(fs *pflag.FlagSet, s stdio, args []string) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			if h, ok := helps.Load(fs); ok {
				h.(func())()
			}
			return exitOK, false
		}
		return usageError(s, fs, "%v", err), false
	}
	return 0, true
}

// usageError reports a usage problem found after parsing and returns 2.
func usageError(s stdio, fs *pflag.FlagSet, format string, a ...any) int {
	fmt.Fprintf(s.err, "sealrun %s: %s\nRun \"sealrun %s --help\" for usage.\n", fs.Name(), fmt.Sprintf(format, a...), fs.Name())
	return exitUsage
}

// failure reports an operational error and returns 1.
func failure(s stdio, fs *pflag.FlagSet, err error) int {
	fmt.Fprintf(s.err, "sealrun %s: %v\n", fs.Name(), err)
	return exitError
}

func runVersion(_ context.Context, s stdio, args []string) int {
	fs := newFlags(s, "version", "Print the sealrun version.", "  sealrun version")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	fmt.Fprintf(s.out, "sealrun %s\n", version)
	return exitOK
}
