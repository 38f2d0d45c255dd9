package main

import (
	"context"
	"embed"
	"fmt"
	"os"
	"strings"

	"github.com/sealrun/sealrun/cmd/sealrun/configcheck"
)

// defaults are the complete, commented configurations print-default writes.
// They live in the binary, not in configs/, so the command works wherever
// sealrun is installed.
//
//go:embed defaults/*.yaml
var defaults embed.FS

func runConfig(ctx context.Context, s stdio, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		w, code := s.out, exitOK
		if len(args) == 0 {
			w, code = s.err, exitUsage
		}
		fmt.Fprint(w, `Check configuration files and print complete defaults.

Usage:
  sealrun config check [--kind proxy|runner|storage] [--complete] FILE
  sealrun config print-default proxy|runner|storage

Examples:
  sealrun config check /etc/sealrun/proxy.yaml
  sealrun config print-default runner > runner.yaml

Run "sealrun config <command> --help" for flags and examples.
`)
		return code
	}
	switch args[0] {
	case "check":
		return runConfigCheck(ctx, s, args[1:])
	case "print-default":
		return runConfigPrintDefault(ctx, s, args[1:])
	}
	fmt.Fprintf(s.err, "sealrun config: unknown command %q; want check or print-default\n", args[0])
	return exitUsage
}

func runConfigCheck(_ context.Context, s stdio, args []string) int {
	fs := newFlags(s, "config check [--kind K] [--complete] FILE...",
		`Load a configuration file with the loader the component itself uses (every
field name checked, defaults applied, values validated) and report the first
problem. The kind is detected from the top-level keys: amqp or queues make a
runner config, other files with storage a proxy config, and secrets and
state a storage config. Paths written as ${CREDENTIALS_DIRECTORY}/name are
expanded as under systemd; set the variable to check such a file elsewhere.
Several files are each checked and reported, one line each; exits 0 when
every file loads, 1 (after checking the rest) when any does not.`,
		`  sealrun config check /etc/sealrun/proxy.yaml
  CREDENTIALS_DIRECTORY=/etc/sealrun/credentials sealrun config check /etc/sealrun/proxy.yaml

  sealrun config check /etc/sealrun/proxy.yaml /etc/sealrun/runner.yaml

  # also require every option to be written out (how configs/ is tested)
  sealrun config check --complete configs/proxy-vault.yaml`)
	kind := fs.String("kind", "", "proxy, runner or storage (default: detected)")
	complete := fs.Bool("complete", false, "also fail on any option that is not written out")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if fs.NArg() == 0 {
		return usageError(s, fs, "give at least one FILE")
	}
	code := exitOK
	for _, path := range fs.Args() {
		k, err := checkConfigFile(path, *kind, *complete)
		if err != nil {
			fmt.Fprintf(s.err, "sealrun %s: %v\n", fs.Name(), err)
			code = exitError
			continue
		}
		fmt.Fprintf(s.out, "%s: ok (%s config)\n", path, k)
	}
	return code
}

// checkConfigFile loads path as kind (detected when empty) and returns the
// kind it was checked as.
func checkConfigFile(path, kind string, complete bool) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	if kind == "" {
		if kind, err = configcheck.DetectKind(data); err != nil {
			return "", fmt.Errorf("%s: %w", path, err)
		}
	}
	return kind, configcheck.Check(kind, path, data, complete)
}

func runConfigPrintDefault(_ context.Context, s stdio, args []string) int {
	fs := newFlags(s, "config print-default proxy|runner|storage",
		`Print a complete configuration with every option, its default and why you
would change it. It passes "sealrun config check --complete" as printed; the
paths are the systemd layout's (see deploy/systemd).`,
		`  sealrun config print-default proxy > /etc/sealrun/proxy.yaml
  sealrun config print-default runner | less`)
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return usageError(s, fs, "give one kind: %s", strings.Join(configcheck.Kinds, ", "))
	}
	data, err := defaults.ReadFile("defaults/" + fs.Arg(0) + ".yaml")
	if err != nil {
		return usageError(s, fs, "unknown kind %q: want %s", fs.Arg(0), strings.Join(configcheck.Kinds, ", "))
	}
	s.out.Write(data)
	return exitOK
}
