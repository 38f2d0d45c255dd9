package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/sealrun/sealrun/proxy/client"
	"github.com/sealrun/sealrun/proxy/wire"
	"github.com/sealrun/sealrun/secrets"
)

// maxSecretValue bounds a value read for "secrets put" (the drivers' 1 MiB).
const maxSecretValue = 1 << 20

// secretsSubcommands are the verbs of "sealrun secrets".
var secretsSubcommands = []command{
	{name: "apikey", summary: "create, list or revoke proxy API credentials", run: runSecretsAPIKey},
	{name: "get", summary: "print a stored secret or model", run: runSecretsGet},
	{name: "ls", summary: "list the keys of a kind below a prefix", run: runSecretsLs},
	{name: "put", summary: "store a secret or model read from stdin or a file", run: runSecretsPut},
	{name: "rm", summary: "delete a stored secret or model", run: runSecretsRm},
	{name: "serve", summary: "run the secrets proxy (Custodia API on a unix socket)", run: runSecretsServe},
}

func runSecrets(ctx context.Context, s stdio, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		w, code := s.out, exitOK
		if len(args) == 0 {
			w, code = s.err, exitUsage
		}
		fmt.Fprint(w, "Store and read secrets and models through the configured storage backends.\n\nUsage:\n  sealrun secrets <put|get|ls|rm|serve|apikey> --config FILE [flags] [PATH]\n\nCommands:\n")
		for _, c := range secretsSubcommands {
			fmt.Fprintf(w, "  %-4s %s\n", c.name, c.summary)
		}
		fmt.Fprintf(w, "\nKinds (--kind, default raw): %s\n\nExamples:\n%s\n\nRun \"sealrun secrets <command> --help\" for flags and examples.\n",
			strings.Join(secrets.Default().Kinds(), ", "), `  sealrun secrets put --config configs/sealrun.yaml db/password < password.txt
  sealrun secrets get --config configs/sealrun.yaml db/password
  sealrun secrets ls --config configs/sealrun.yaml db
  sealrun secrets rm --config configs/sealrun.yaml db/password`)
		return code
	}
	for _, c := range secretsSubcommands {
		if c.name == args[0] {
			return c.run(ctx, s, args[1:])
		}
	}
	fmt.Fprintf(s.err, "sealrun secrets: unknown command %q; want put, get, ls, rm, serve or apikey\n", args[0])
	return exitUsage
}

// secretsFlags are the flags every secrets verb shares.
type secretsFlags struct {
	fs                        *pflag.FlagSet
	config                    string
	kind                      string
	socket, apiID, apiKeyFile string
	idHeader, keyHeader       string
}

func newSecretsFlags(s stdio, verb, summary, examples string) *secretsFlags {
	f := &secretsFlags{fs: newFlags(s, "secrets "+verb+" (--config FILE | --socket SOCK --api-id ID) [flags] PATH", summary, examples)}
	f.fs.StringVar(&f.config, "config", "", "storage or proxy configuration file: act on the backends directly")
	f.fs.StringVar(&f.socket, "socket", "", "act through a running secrets proxy on this unix socket instead")
	f.fs.StringVar(&f.apiID, "api-id", "", "proxy API id (with --socket)")
	f.fs.StringVar(&f.apiKeyFile, "api-key-file", "", "file holding the proxy API key (with --socket; default $SEALRUN_API_KEY)")
	f.fs.StringVar(&f.idHeader, "id-header", wire.DefaultIDHeader, "header carrying the API id, as the proxy's auth.id_header (with --socket)")
	f.fs.StringVar(&f.keyHeader, "key-header", wire.DefaultKeyHeader, "header carrying the API key, as the proxy's auth.key_header (with --socket; a Custodia deployment may use e.g. CUSTODIA_KEY_ID)")
	f.fs.StringVar(&f.kind, "kind", secrets.KindRaw, "model kind; raw stores the bytes as an ad-hoc secret")
	return f
}

// open parses the flags and one positional PATH (optional when pathOptional), then
// opens the storage service.
func (f *secretsFlags) open(ctx context.Context, s stdio, args []string, pathOptional bool) (svc modelStore, path string, code int, ok bool) {
	if code, ok := parse(f.fs, s, args); !ok {
		return nil, "", code, false
	}
	switch {
	case (f.config == "") == (f.socket == ""):
		return nil, "", usageError(s, f.fs, "give either --config or --socket"), false
	case f.socket != "" && f.apiID == "":
		return nil, "", usageError(s, f.fs, "--socket needs --api-id"), false
	case f.fs.NArg() > 1:
		return nil, "", usageError(s, f.fs, "want one PATH, got %d arguments", f.fs.NArg()), false
	case f.fs.NArg() == 0 && !pathOptional:
		return nil, "", usageError(s, f.fs, "PATH is required"), false
	}
	path = f.fs.Arg(0)
	if _, err := secrets.Default().New(f.kind, path); err != nil {
		return nil, "", usageError(s, f.fs, "%v", err), false
	}
	svc, err := openModelStore(ctx, f.config, client.Config{Socket: f.socket, ID: f.apiID, KeyFile: f.apiKeyFile,
		IDHeader: f.idHeader, KeyHeader: f.keyHeader})
	if err != nil {
		return nil, "", failure(s, f.fs, err), false
	}
	return svc, path, 0, true
}

func runSecretsPut(ctx context.Context, s stdio, args []string) int {
	f := newSecretsFlags(s, "put", `Store a secret or model. The value is read from stdin or --value-file, never
from a flag, so it stays out of shell history. With --kind raw (the default)
the bytes are stored as they are; other kinds read the model as JSON, and
its key field must match PATH.`, `  sealrun secrets put --config sealrun.yaml db/password < password.txt
  sealrun secrets put --config sealrun.yaml --value-file id_ed25519 hosts/h1/ssh-key
  echo '{"address":"h1:22","ssh_private_key":"<base64>","remote_user":"run"}' |
    sealrun secrets put --config sealrun.yaml --kind host-creds h1:22`)
	valueFile := f.fs.String("value-file", "", "read the value from this file instead of stdin")
	ifAbsent := f.fs.Bool("if-absent", false, "fail if PATH already exists instead of overwriting")
	svc, path, code, ok := f.open(ctx, s, args, false)
	if !ok {
		return code
	}
	defer svc.Close()
	in := s.in
	if *valueFile != "" {
		file, err := os.Open(*valueFile)
		if err != nil {
			return failure(s, f.fs, err)
		}
		defer file.Close()
		in = file
	}
	data, err := io.ReadAll(io.LimitReader(in, maxSecretValue+1))
	switch {
	case err != nil:
		return failure(s, f.fs, fmt.Errorf("read value: %w", err))
	case len(data) > maxSecretValue:
		return failure(s, f.fs, fmt.Errorf("value is larger than %d bytes", maxSecretValue))
	case len(data) == 0:
		return failure(s, f.fs, errors.New("empty value: nothing read from stdin or --value-file"))
	}
	m, _ := svc.Registry().New(f.kind, path)
	if raw, isRaw := m.(*secrets.Raw); isRaw {
		raw.Value = secrets.Secret(data)
	} else {
		if err := json.Unmarshal(data, m); err != nil {
			// json errors name types and offsets, never the input.
			return failure(s, f.fs, fmt.Errorf("decode %s JSON: %w", f.kind, err))
		}
		if m.Key() != path {
			return usageError(s, f.fs, "the %s's key is %q but PATH is %q", f.kind, m.Key(), path)
		}
	}
	if err := svc.Put(ctx, m, *ifAbsent); err != nil {
		return failure(s, f.fs, err)
	}
	return exitOK
}

func runSecretsGet(ctx context.Context, s stdio, args []string) int {
	f := newSecretsFlags(s, "get", `Print a stored secret or model on stdout: raw secrets as their bytes, other
kinds as JSON (secret fields base64).`, `  sealrun secrets get --config sealrun.yaml db/password
  sealrun secrets get --config sealrun.yaml --kind host-creds h1:22
  sealrun secrets get --socket /run/sealrun/secrets.sock --api-id ops --api-key-file ops.key db/password
  # through a proxy whose auth headers are renamed (auth.key_header: CUSTODIA_KEY_ID):
  sealrun secrets get --socket /run/sealrun/secrets.sock --api-id ops --api-key-file ops.key \
      --key-header CUSTODIA_KEY_ID db/password`)
	svc, path, code, ok := f.open(ctx, s, args, false)
	if !ok {
		return code
	}
	defer svc.Close()
	m, _ := svc.Registry().New(f.kind, path)
	if err := svc.Get(ctx, m); err != nil {
		return failure(s, f.fs, err)
	}
	if raw, isRaw := m.(*secrets.Raw); isRaw {
		_, err := s.out.Write(raw.Value.Reveal())
		if err != nil {
			return failure(s, f.fs, err)
		}
		return exitOK
	}
	enc := json.NewEncoder(s.out)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return failure(s, f.fs, err)
	}
	return exitOK
}

func runSecretsLs(ctx context.Context, s stdio, args []string) int {
	f := newSecretsFlags(s, "ls", "List the keys of a kind below a directory PATH (all keys without one), sorted.",
		`  sealrun secrets ls --config sealrun.yaml
  sealrun secrets ls --config sealrun.yaml db
  sealrun secrets ls --config sealrun.yaml --kind runner`)
	svc, path, code, ok := f.open(ctx, s, args, true)
	if !ok {
		return code
	}
	defer svc.Close()
	keys, err := svc.List(ctx, f.kind, path)
	if err != nil {
		return failure(s, f.fs, err)
	}
	for _, k := range keys {
		fmt.Fprintln(s.out, k)
	}
	return exitOK
}

func runSecretsRm(ctx context.Context, s stdio, args []string) int {
	f := newSecretsFlags(s, "rm", "Delete a stored secret or model; a missing PATH is an error.",
		`  sealrun secrets rm --config sealrun.yaml db/password
  sealrun secrets rm --config sealrun.yaml --kind host-creds h1:22`)
	svc, path, code, ok := f.open(ctx, s, args, false)
	if !ok {
		return code
	}
	defer svc.Close()
	if err := svc.Delete(ctx, f.kind, path); err != nil {
		return failure(s, f.fs, err)
	}
	return exitOK
}
