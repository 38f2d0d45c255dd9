package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sealrun/sealrun/migrate"
	"github.com/sealrun/sealrun/proxy"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage"
	storageconfig "github.com/sealrun/sealrun/storage/config"
	"github.com/sealrun/sealrun/storage/driver"
)

// migrateRegistry is every model a migration reads or writes: the proxy's
// models and the migration checkpoint.
func migrateRegistry() *secrets.Registry {
	r := proxy.Registry()
	migrate.Register(r)
	return r
}

// openMigrateStore opens a store (storage or proxy config) with migrateRegistry.
func openMigrateStore(ctx context.Context, path string) (*storage.Service, error) {
	cfg, err := loadStorageConfig(path)
	if err != nil {
		return nil, err
	}
	return storageconfig.OpenWith(ctx, cfg, storage.Options{Registry: migrateRegistry()})
}

func runMigrate(ctx context.Context, s stdio, args []string) int {
	fs := newFlags(s, "migrate --from SRC --to CONFIG [flags]",
		`Import existing secrets into the sealrun store named by CONFIG (a storage or
proxy configuration). Every run plans first: each item is to be created,
updated, unchanged or skipped (with why); --dry-run stops there. Key files are
parsed before anything is written, and a bad one is reported, not imported.
Writes are compare-and-set, so a value changed concurrently is reported as a
conflict, not overwritten; each write is read back and compared by SHA-256.
A second run changes nothing. An interrupted run resumes from a checkpoint in
the state store when rerun with the same --from and --to. Output and the
--report JSON name items, never values. Exits 1 if any item failed.

Sources (SRC):
`+migrate.SpecHelp+`

With --to proxy:SOCKET the proxy's Custodia API is used: creates are
compare-and-set, but a value that differs cannot be replaced atomically and
is reported as failed. The destination must not share an embedded etcd data_dir with an overlay:
source, and with an embedded etcd the proxy using it must be stopped.`,
		`  # preview, then import a StudioML Kubernetes secret mount:
  sealrun migrate --from dir:/etc/studioml/certs --to /etc/sealrun/proxy.yaml --dry-run
  sealrun migrate --from dir:/etc/studioml/certs --to /etc/sealrun/proxy.yaml --report migrate.json

  # kubectl output (one Secret or a List):
  kubectl get secret -n studioml -o yaml > secrets.yaml
  sealrun migrate --from k8s:secrets.yaml --to storage.yaml

  # plain base64 values in etcd, mapped to kinds, deleted once verified:
  sealrun migrate --from etcd:10.0.0.1:2379/studioml/keys/ --mapping mapping.yaml \
      --to storage.yaml --delete-source
  #   mapping.yaml:
  #   rules:
  #     - {match: '^signing/([^/]+)$', kind: signing-key, encoding: auto}
  #     - {match: '^private$', kind: message-private-key, key: message, encoding: base64}
  #     - {match: '^passphrase$', kind: message-passphrase, key: message, encoding: base64}
  #     - {match: '^tmp/', skip: true}
  #     - {match: '^(.+)$', kind: raw, encoding: raw}

  # a running Custodia, Vault KV, or another sealrun store:
  sealrun migrate --from custodia:/run/custodia/custodia.sock --source-auth custodia-auth.yaml \
      --containers app1,app2/db --to storage.yaml
  #   custodia-auth.yaml (the headers only if the deployment renamed them):
  #   id: migrate
  #   key: <the API key>
  #   id_header: CUSTODIA_AUTH_ID
  #   key_header: CUSTODIA_KEY_ID
  # Custodia's own store, read directly (SqliteStore + master key from its config):
  sealrun migrate --from custodia-store:/etc/custodia/custodia.conf --to storage.yaml --dry-run
  VAULT_ADDR=https://vault:8200 VAULT_TOKEN=... sealrun migrate --from vault:secret/studioml --to storage.yaml
  sealrun migrate --from overlay:old-storage.yaml --to vault-storage.yaml

  # into a running proxy (create-only: values that differ are reported, not replaced):
  sealrun migrate --from dir:/etc/studioml/certs --to proxy:/run/sealrun/secrets.sock --to-auth admin-auth.yaml`)
	from := fs.String("from", "", "source spec (see above)")
	to := fs.String("to", "", "destination: a storage or proxy configuration file, or proxy:SOCKET (a running proxy)")
	toAuth := fs.String("to-auth", "", "YAML file with id: and key: (and id_header:, key_header: if the proxy renamed them) for a proxy:SOCKET destination")
	dryRun := fs.Bool("dry-run", false, "print the plan and write nothing")
	onConflict := fs.String("on-conflict", "fail", "when the destination changed after the plan: fail, skip or overwrite (still compare-and-set)")
	verify := fs.Bool("verify", true, "read every write back and compare SHA-256 digests")
	deleteSource := fs.Bool("delete-source", false, "delete each item from the source once verified (etcd, custodia, overlay sources)")
	reportPath := fs.String("report", "", "write a JSON report (counts and per-item results, no values) to FILE")
	mappingPath := fs.String("mapping", "", "YAML mapping of names to kinds (etcd and vault sources)")
	containers := fs.String("containers", "", "containers a custodia source walks, sub-containers included: a,b/c or @FILE (one a line); Custodia refuses listing /secrets/, so name them")
	sourceAuth := fs.String("source-auth", "", "YAML file with id: and key: (and id_header:, key_header: if the server renamed them) for a custodia source")
	keyID := fs.String("key-id", migrate.DefaultKeyID, "key id for the StudioML message key pair (dir and k8s sources)")
	concurrency := fs.Int("concurrency", 8, "reads, and writes or write batches, in flight")
	batchSize := fs.Int("batch-size", driver.MaxBatch, fmt.Sprintf("writes per atomic batch into an etcd store, at most %d (1: item by item; a batch that conflicts is retried item by item)", driver.MaxBatch))
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if *from == "" || *to == "" || fs.NArg() != 0 {
		return usageError(s, fs, "--from SRC and --to CONFIG are required and no arguments are taken")
	}
	policy, err := migrate.ParseConflictPolicy(*onConflict)
	if err != nil {
		return usageError(s, fs, "%v", err)
	}
	spec, err := migrate.ParseSpec(*from)
	if err != nil {
		return usageError(s, fs, "%v", err)
	}
	if *deleteSource && !*verify {
		return usageError(s, fs, "--delete-source needs --verify: a source item is only deleted once its copy is verified")
	}
	so := migrate.SourceOptions{KeyID: *keyID, AuthFile: *sourceAuth, OpenStore: openMigrateStore}
	if *containers != "" {
		if spec.Scheme != "custodia" {
			return usageError(s, fs, "--containers is for a custodia: source")
		}
		if so.Containers, err = migrate.ParseContainers(*containers); err != nil {
			return usageError(s, fs, "%v", err)
		}
	}
	if *mappingPath != "" {
		if so.Mapping, err = migrate.LoadMapping(*mappingPath); err != nil {
			return failure(s, fs, err)
		}
	}
	src, err := migrate.OpenSource(ctx, spec, so)
	if err != nil {
		return failure(s, fs, err)
	}
	defer src.Close()
	var dst migrate.Store
	checkpoint := true
	if sock, ok := strings.CutPrefix(*to, "proxy:"); ok {
		// Through the Custodia API: create-only, and no state store for a
		// checkpoint (a rerun resumes by re-planning).
		ps, err := migrate.OpenProxyStore(sock, *toAuth, migrateRegistry())
		if err != nil {
			return failure(s, fs, err)
		}
		defer ps.Client.Close()
		dst, checkpoint = ps, false
	} else {
		st, err := openMigrateStore(ctx, *to)
		if err != nil {
			return failure(s, fs, fmt.Errorf("destination: %w", err))
		}
		defer st.Close()
		dst = st
	}

	bar := newProgress(s.err)
	rep, runErr := migrate.Run(ctx, src, dst, migrate.Options{
		From: spec.String(), To: *to, OnConflict: policy, Verify: *verify, DeleteSource: *deleteSource,
		DryRun: *dryRun, Concurrency: *concurrency, BatchSize: *batchSize, Checkpoint: checkpoint, Progress: bar.update,
	})
	bar.finish()
	if rep != nil {
		printMigrateReport(s.out, rep)
		if *reportPath != "" {
			if err := rep.WriteFile(*reportPath); err != nil {
				return failure(s, fs, err)
			}
		}
	}
	if runErr != nil {
		return failure(s, fs, runErr)
	}
	if rep.Failed > 0 {
		fmt.Fprintf(s.err, "sealrun migrate: %d item(s) failed:\n", rep.Failed)
		for _, it := range rep.Failures() {
			fmt.Fprintf(s.err, "  %s/%s (%s): %s: %s\n", it.Kind, it.Key, it.Origin, it.Result, it.Reason)
		}
		return exitError
	}
	return exitOK
}

// printMigrateReport prints the plan (dry run) or the changes and a summary.
// Items are named by kind, key and origin; values never reach the output.
func printMigrateReport(w io.Writer, rep *migrate.Report) {
	for _, it := range rep.Items {
		if !rep.DryRun && (it.Result == migrate.ResultUnchanged || it.Failed) {
			continue // failures are listed on stderr
		}
		line := fmt.Sprintf("%-13s %s/%s", it.Result, it.Kind, it.Key)
		if it.Reason != "" {
			line += " (" + it.Reason + ")"
		}
		if it.PreviousRun != "" && it.Result == migrate.ResultUnchanged {
			line += " (" + it.PreviousRun + " by the interrupted run)"
		}
		fmt.Fprintln(w, line)
	}
	what := "migrate"
	if rep.DryRun {
		what = "migrate (dry run, nothing written)"
	}
	if rep.Resumed {
		what += " (resumed from checkpoint)"
	}
	fmt.Fprintf(w, "%s: %d item(s) from %s: %s\n", what, rep.Total, rep.From, rep.Summary())
}

// progress draws a bar on stderr when stderr is a terminal, and nothing
// otherwise: the report on stdout stays clean for a pipe or a file.
type progress struct {
	w     io.Writer
	tty   bool
	drawn bool
}

func newProgress(w io.Writer) *progress {
	p := &progress{w: w}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *progress) update(done, total int) {
	if total == 0 || !p.tty {
		return
	}
	const width = 30
	n := done * width / total
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d", strings.Repeat("#", n), strings.Repeat(".", width-n), done, total)
	p.drawn = true
}

func (p *progress) finish() {
	if p.drawn {
		fmt.Fprintln(p.w)
	}
}
