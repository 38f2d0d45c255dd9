package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/sealrun/sealrun/cmd/sealrun/configcheck"
	"github.com/sealrun/sealrun/internal/logfmt"
	"github.com/sealrun/sealrun/proxy"
	"github.com/sealrun/sealrun/runner"
	"github.com/sealrun/sealrun/storage"
	storageconfig "github.com/sealrun/sealrun/storage/config"
)

// loadStorageConfig reads the storage part of any sealrun config file: a
// storage config itself, or the storage: section of a proxy or runner config,
// so operators point every secrets command at the file a component runs with.
func loadStorageConfig(path string) (*storageconfig.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	kind, err := configcheck.DetectKind(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	var sc *storageconfig.Config
	switch kind {
	case "proxy":
		var c *proxy.Config
		if c, err = proxy.DecodeConfig(bytes.NewReader(data)); err == nil {
			sc = c.StorageConfig()
		}
	case "runner":
		var c *runner.Config
		if c, err = runner.DecodeConfig(bytes.NewReader(data)); err == nil {
			if sc = c.StorageConfig(); sc == nil {
				err = errors.New("the runner config has no storage: section")
			}
		}
	default:
		sc, err = storageconfig.Decode(bytes.NewReader(data))
	}
	if err != nil {
		return nil, fmt.Errorf("%s config %s: %w", kind, path, err)
	}
	return sc, nil
}

// openStore opens the storage service with every model the proxy knows.
func openStore(ctx context.Context, path string) (*storage.Service, error) {
	cfg, err := loadStorageConfig(path)
	if err != nil {
		return nil, err
	}
	return storageconfig.OpenWith(ctx, cfg, storage.Options{Registry: proxy.Registry()})
}

func runSecretsServe(ctx context.Context, s stdio, args []string) int {
	fs := newFlags(s, "secrets serve --config FILE",
		`Run the secrets proxy: Custodia's REST API on a unix socket (and optionally
TLS), with API keys, per-credential path authorization, rate limits and a
hash-chained audit log, in front of the configured secret backend. It is the
only process that needs the master key or the Vault token. Logs JSON on
stderr; stops gracefully on SIGTERM. With LISTEN_FDS set (systemd socket
activation) it serves the passed sockets instead of creating one; a passed
TCP socket is served with listen.tcp's TLS and client certificates (it is
refused without them), and listen.tcp without a passed TCP socket is
opened as usual.`,
		`  sealrun secrets serve --config /etc/sealrun/proxy.yaml

  # then, as a client (any Custodia client works the same way):
  curl --unix-socket /run/sealrun/secrets.sock \
    -H "CUSTODIA_AUTH_ID: runner-1" -H "CUSTODIA_AUTH_KEY: $(cat runner-1.key)" \
    http://localhost/secrets/sealrun/signing-key/`)
	cfgPath := fs.String("config", "", "proxy configuration file (see configs/proxy.yaml)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if *cfgPath == "" || fs.NArg() != 0 {
		return usageError(s, fs, "--config FILE is required and no arguments are taken")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usageError(s, fs, "--log-level: %v", err)
	}
	cfg, err := proxy.LoadConfig(*cfgPath)
	if err != nil {
		return failure(s, fs, err)
	}
	log := logfmt.New(s.err, level)
	if err := proxy.Run(ctx, cfg, log, nil); err != nil {
		return failure(s, fs, err)
	}
	return exitOK
}

const apikeyExamples = `  # A runner may read its keys and watch for changes, nothing else:
  sealrun secrets apikey create --config proxy.yaml --id runner-1 \
      --path /secrets/sealrun/ --verbs get,list,watch > runner-1.key
  sealrun secrets apikey list --config proxy.yaml
  sealrun secrets apikey revoke --config proxy.yaml --id runner-1`

func runSecretsAPIKey(ctx context.Context, s stdio, args []string) int {
	verb := ""
	if len(args) > 0 {
		verb, args = args[0], args[1:]
	}
	use := "secrets apikey " + verb + " --config FILE [flags]"
	summary := map[string]string{
		"create": "Create an API credential. Its key is printed once on stdout and stored only\nas a keyed hash: keep it (a file, a systemd credential, a Kubernetes Secret).\nA path ending in \".\" grants exactly that path; others grant the path and\neverything below it.",
		"list":   "List API credentials: id, paths and verbs (never keys or hashes).",
		"revoke": "Revoke an API credential; a running proxy refuses its key at once.",
	}[verb]
	if summary == "" {
		fs := newFlags(s, "secrets apikey create|list|revoke --config FILE [flags]", "Manage the secrets proxy's API credentials.", apikeyExamples)
		if code, ok := parse(fs, s, append([]string{verb}, args...)); !ok && verb != "" {
			return code
		} else if verb == "--help" || verb == "-h" {
			return exitOK
		}
		return usageError(s, fs, "want create, list or revoke")
	}
	fs := newFlags(s, use, summary, apikeyExamples)
	cfgPath := fs.String("config", "", "proxy (or storage) configuration file")
	id := fs.String("id", "", "credential id (letters, digits, '.', '_', '-')")
	paths := fs.StringSlice("path", nil, "path prefix the credential may use (repeatable or comma-separated)")
	verbs := fs.StringSlice("verbs", []string{"get", "list", "watch"}, "verbs: get, list, watch, put, create, delete, or *")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if *cfgPath == "" {
		return usageError(s, fs, "--config is required")
	}
	if verb != "list" && *id == "" {
		return usageError(s, fs, "--id is required")
	}
	if verb == "create" && len(*paths) == 0 {
		return usageError(s, fs, "--path is required (e.g. --path /secrets/sealrun/)")
	}
	store, err := openStore(ctx, *cfgPath)
	if err != nil {
		return failure(s, fs, err)
	}
	defer store.Close()
	creds := proxy.NewCredentials(store)
	switch verb {
	case "create":
		key, err := creds.Create(ctx, *id, proxy.Grant{Paths: *paths, Verbs: *verbs})
		if err != nil {
			return failure(s, fs, err)
		}
		fmt.Fprintln(s.out, key)
		fmt.Fprintf(s.err, "created credential %s; its key (above) is shown only once\n", *id)
	case "list":
		list, err := creds.List(ctx)
		if err != nil {
			return failure(s, fs, err)
		}
		tw := tabwriter.NewWriter(s.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tPATHS\tVERBS")
		for _, c := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", c.ID, strings.Join(c.Prefixes, ","), strings.Join(c.Verbs, ","))
		}
		tw.Flush()
	case "revoke":
		if err := creds.Revoke(ctx, *id); err != nil {
			return failure(s, fs, err)
		}
		fmt.Fprintf(s.err, "revoked credential %s\n", *id)
	}
	return exitOK
}
