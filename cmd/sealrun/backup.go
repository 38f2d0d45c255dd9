package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/sealrun/sealrun/backup"
	storageconfig "github.com/sealrun/sealrun/storage/config"
	"github.com/sealrun/sealrun/storage/custodia"
	"github.com/sealrun/sealrun/storage/kek"
)

const backupExamples = `  # the master key in 5 printable shares, any 3 restore it:
  sealrun backup split --key /etc/sealrun/master.key --shares 5 --threshold 3 --out /media/usb/shares
  # every Transit-wrapped DEK (Vault reached once), so the data outlives Vault:
  sealrun backup split --config /etc/sealrun/proxy.yaml --deks --shares 5 --threshold 3 --out /media/usb/shares
  # restore it from 3 share files, or from lines typed on stdin:
  sealrun backup restore --out /etc/sealrun/master.key share-1.txt share-3.txt share-5.txt
  sealrun backup restore --out /etc/sealrun/master.key -
  # the encrypted store, and loading it into an empty one:
  sealrun backup store --config /etc/sealrun/proxy.yaml --out /var/backups/sealrun-store.json
  sealrun backup load --config /etc/sealrun/proxy.yaml --in /var/backups/sealrun-store.json`

// runBackup dispatches "sealrun backup split|restore|store|load".
func runBackup(ctx context.Context, s stdio, args []string) int {
	verb := ""
	if len(args) > 0 {
		verb, args = args[0], args[1:]
	}
	switch verb {
	case "split":
		return runBackupSplit(ctx, s, args)
	case "restore":
		return runBackupRestore(ctx, s, args)
	case "store":
		return runBackupStore(ctx, s, args)
	case "load":
		return runBackupLoad(ctx, s, args)
	}
	fs := newFlags(s, "backup split|restore|store|load [flags]",
		"Back up sealrun's keys as printable Shamir shares (split, restore) and its\nencrypted store as a file (store, load). See docs/backup.md.", backupExamples)
	if code, ok := parse(fs, s, append([]string{verb}, args...)); !ok && verb != "" {
		return code
	} else if verb == "--help" || verb == "-h" {
		return exitOK
	}
	return usageError(s, fs, "want split, restore, store or load")
}

func runBackupSplit(ctx context.Context, s stdio, args []string) int {
	fs := newFlags(s, "backup split --key FILE|--config FILE --deks --shares N --threshold K --out DIR",
		`Split a key file into N printable shares, any K of which restore it
(Shamir's secret sharing). Each share is DIR/<key id>-share-<i>-of-<N>.txt,
holding numbered lines that each end in a check, and the same lines as a QR
code in .png; files are 0600 and never overwritten. Nothing secret is printed.
Print each share, give it to its holder, and delete DIR.

--key takes any key file: the overlay master key (and each of old_keys), a
runner's RSA or HPKE private key. With a Transit KEK, --config and --deks
unwrap every DEK through Vault once and split each, so the data can be
opened without Vault.`, backupExamples)
	keyPath := fs.String("key", "", "key file to split")
	cfgPath := fs.String("config", "", "storage or proxy configuration (with --deks)")
	deks := fs.Bool("deks", false, "split every Transit-wrapped DEK of --config's overlay")
	n := fs.Int("shares", 5, "number of shares N")
	k := fs.Int("threshold", 3, "shares needed to restore K")
	out := fs.String("out", "", "directory for the share files (created 0700)")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if *out == "" || fs.NArg() != 0 || (*keyPath == "") == (*cfgPath == "" || !*deks) || (*keyPath != "" && (*deks || *cfgPath != "")) {
		return usageError(s, fs, "give --out DIR and either --key FILE or --config FILE --deks")
	}
	type keyFile struct {
		id   string
		data []byte
	}
	var keys []keyFile
	if *keyPath != "" {
		data, err := os.ReadFile(*keyPath)
		if err != nil {
			return failure(s, fs, err)
		}
		keys = append(keys, keyFile{backup.KeyID(data), data})
	} else {
		dk, err := exportDEKs(ctx, *cfgPath)
		if err != nil {
			return failure(s, fs, err)
		}
		for _, d := range dk {
			keys = append(keys, keyFile{d.id, d.data})
		}
	}
	for _, kf := range keys {
		shares, err := backup.Split(kf.data, kf.id, *n, *k)
		if err != nil {
			return failure(s, fs, err)
		}
		paths, err := backup.WriteShares(*out, shares)
		if err != nil {
			return failure(s, fs, err)
		}
		fmt.Fprintf(s.out, "key %s: %d shares, any %d restore it (set %s):\n", kf.id, *n, *k, shares[0].Set())
		for _, p := range paths {
			fmt.Fprintf(s.out, "  %s\n", p)
		}
	}
	fmt.Fprintf(s.out, "print each share, hand it to its holder, test a restore (docs/backup.md), then delete %s\n", *out)
	return exitOK
}

type dekFile struct {
	id   string
	data []byte
}

// exportDEKs unwraps every DEK of cfgPath's Transit overlay and renders each
// as an overlay key file with its kid, as a key-file overlay opens them.
func exportDEKs(ctx context.Context, cfgPath string) ([]dekFile, error) {
	cfg, err := loadStorageConfig(cfgPath)
	if err != nil {
		return nil, err
	}
	k, err := storageconfig.OpenKEK(ctx, cfg, nil)
	if err != nil {
		return nil, err
	}
	defer k.Close()
	names, err := k.Store.List(ctx, kek.Dir)
	if err != nil {
		return nil, fmt.Errorf("list wrapped DEKs: %w", err)
	}
	sort.Strings(names)
	var out []dekFile
	for _, name := range names {
		e, err := k.Store.Get(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
		var rec struct {
			KID     string `json:"kid"`
			KEK     string `json:"kek"`
			Wrapped string `json:"wrapped"`
		}
		if err := json.Unmarshal(e.Value, &rec); err != nil || rec.KID == "" {
			return nil, fmt.Errorf("%s: not a wrapped DEK record", name)
		}
		raw, err := k.Transit.Unwrap(ctx, rec.Wrapped)
		if err != nil {
			return nil, fmt.Errorf("unwrap DEK %s: %w", rec.KID, err)
		}
		data, _ := json.Marshal(map[string]string{"k": base64.RawURLEncoding.EncodeToString(raw), "kid": rec.KID, "kty": "oct"})
		clear(raw)
		out = append(out, dekFile{rec.KID, data})
	}
	if len(out) == 0 {
		return nil, errors.New("no wrapped DEKs in the store yet: start the proxy once so it creates its first DEK")
	}
	return out, nil
}

func runBackupRestore(_ context.Context, s stdio, args []string) int {
	fs := newFlags(s, "backup restore --out FILE SHARE-FILE...|-",
		`Restore a key file from K shares written by "sealrun backup split": share
files, or with "-" the numbered lines typed (or pasted from a QR scan) on
stdin, each share starting at its line 01; end with Ctrl-D. A mistyped line is
reported by its number. Shares of different keys or splits, duplicated or
corrupted shares, and fewer than K are refused. The key file is written 0600
(never over an existing file) and its key id printed: it must match the
"key id" on the shares.`, backupExamples)
	out := fs.String("out", "", "key file to write (must not exist)")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if *out == "" || fs.NArg() == 0 {
		return usageError(s, fs, "give --out FILE and share files (or - for stdin)")
	}
	var shares []backup.Share
	for _, a := range fs.Args() {
		var r io.Reader
		name := a
		if a == "-" {
			fmt.Fprintln(s.err, "type or paste the numbered lines of each share, then Ctrl-D:")
			r, name = s.in, "stdin"
		} else {
			f, err := os.Open(a)
			if err != nil {
				return failure(s, fs, err)
			}
			defer f.Close()
			r = f
		}
		got, err := backup.Parse(r, name)
		if err != nil {
			return failure(s, fs, err)
		}
		for _, sh := range got {
			fmt.Fprintf(s.err, "read %v\n", sh)
		}
		shares = append(shares, got...)
	}
	data, err := backup.Combine(shares)
	if err != nil {
		return failure(s, fs, err)
	}
	defer clear(data)
	id := backup.KeyID(data)
	if id != shares[0].KeyID {
		return failure(s, fs, fmt.Errorf("the restored key's id is %s but the shares name %s: the shares were made from a different file; nothing written", id, shares[0].KeyID))
	}
	if err := backup.WriteNewFile(*out, data); err != nil {
		return failure(s, fs, err)
	}
	fmt.Fprintf(s.out, "restored key %s to %s\n", id, *out)
	return exitOK
}

// storePrefixes are the etcd prefixes of cfg's store: state, the overlay's
// ciphertexts and its wrapped DEKs.
// loadStoreConfig is the storage configuration at path and the prefixes a
// store backup covers under it.
func loadStoreConfig(path string) (*storageconfig.Config, backup.Prefixes, error) {
	cfg, err := loadStorageConfig(path)
	if err != nil {
		return nil, backup.Prefixes{}, err
	}
	prefixes, err := storePrefixes(cfg)
	return cfg, prefixes, err
}

func storePrefixes(cfg *storageconfig.Config) (backup.Prefixes, error) {
	var p backup.Prefixes
	if cfg.State.Backend != "etcd" {
		return p, errors.New("state.backend is not etcd: only an etcd store can be backed up")
	}
	p.All = append(p.All, cfg.State.Etcd.Prefix)
	if o := cfg.Secrets.Overlay; cfg.Secrets.Backend == "overlay" && o.Store == "etcd" {
		p.All = append(p.All, o.Prefix)
		p.Sealed = append(p.Sealed, o.Prefix)
		// The Custodia API's values and containers, in Custodia's records:
		// values are sealed, but a container is an empty record, so the
		// prefix is not checked as sealed.
		p.All = append(p.All, custodia.Prefix(o.CustodiaNamespace))
		if o.Transit != nil {
			p.All = append(p.All, o.Transit.DEKPrefix)
			p.Sealed = append(p.Sealed, o.Transit.DEKPrefix)
		}
	}
	return p, nil
}

func runBackupStore(ctx context.Context, s stdio, args []string) int {
	fs := newFlags(s, "backup store --config FILE --out FILE",
		`Write a consistent backup of the store: every record under the state
prefix and the overlay's secrets (and wrapped DEK) prefixes, all read at one
etcd revision, as JSON with the revisions. Secrets are exported sealed, as
stored: a value under a secrets prefix that is not sealed stops the backup, so
the file never holds a plaintext secret. It is useless without the master key
(or the DEKs), which "sealrun backup split" keeps. The file is 0600 and never
overwrites another. With an embedded etcd (data_dir), stop the proxy first.`, backupExamples)
	cfgPath := fs.String("config", "", "storage or proxy configuration")
	out := fs.String("out", "", "backup file to write (must not exist)")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if *cfgPath == "" || *out == "" || fs.NArg() != 0 {
		return usageError(s, fs, "--config FILE and --out FILE are required and no arguments are taken")
	}
	cfg, prefixes, err := loadStoreConfig(*cfgPath)
	if err != nil {
		return failure(s, fs, err)
	}
	client, closer, err := storageconfig.OpenEtcdClient(ctx, cfg)
	if err != nil {
		return failure(s, fs, err)
	}
	defer closer.Close()
	b, err := backup.ExportStore(ctx, client, prefixes, func(n int) { fmt.Fprintf(s.err, "\rread %d records", n) })
	fmt.Fprintln(s.err)
	if err != nil {
		return failure(s, fs, err)
	}
	var buf bytes.Buffer
	if err := b.Encode(&buf); err != nil {
		return failure(s, fs, err)
	}
	if err := backup.WriteNewFile(*out, buf.Bytes()); err != nil {
		return failure(s, fs, err)
	}
	fmt.Fprintf(s.out, "backed up %d records at etcd revision %d under %q to %s (sha256 %s)\n", len(b.Records), b.Revision, prefixes.All, *out, b.SHA256)
	return exitOK
}

func runBackupLoad(ctx context.Context, s stdio, args []string) int {
	fs := newFlags(s, "backup load --config FILE --in FILE [--force]",
		`Load a "sealrun backup store" file into the store --config names, which
must be empty (a new etcd or data_dir); every record is written only if its
key is still absent. The backup's prefixes must be the configuration's. Then
start the proxy with the restored master key (sealrun backup restore).`, backupExamples)
	cfgPath := fs.String("config", "", "storage or proxy configuration of the target store")
	in := fs.String("in", "", "backup file")
	force := fs.Bool("force", false, "load into a store that holds records: backup records replace same-named keys, others stay")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if *cfgPath == "" || *in == "" || fs.NArg() != 0 {
		return usageError(s, fs, "--config FILE and --in FILE are required and no arguments are taken")
	}
	cfg, prefixes, err := loadStoreConfig(*cfgPath)
	if err != nil {
		return failure(s, fs, err)
	}
	f, err := os.Open(*in)
	if err != nil {
		return failure(s, fs, err)
	}
	defer f.Close()
	b, err := backup.DecodeStore(f)
	if err != nil {
		return failure(s, fs, fmt.Errorf("%s: %w", filepath.Base(*in), err))
	}
	// Load what the target uses: after a switch away from Transit (Vault is
	// gone, the DEKs restored as key files) the wrapped DEKs are not needed.
	var keep []string
	for _, p := range b.Prefixes {
		if contains(prefixes.All, p) {
			keep = append(keep, p)
		} else {
			fmt.Fprintf(s.err, "skipping the backup's records under %s: %s does not use that prefix\n", p, *cfgPath)
		}
	}
	for _, p := range prefixes.Sealed {
		if !contains(keep, p) && p != "" && !strings.HasSuffix(p, ".deks/") {
			return failure(s, fs, fmt.Errorf("the backup holds no records for %s's secrets prefix %s (it holds %q): load with the configuration the backup was taken with", *cfgPath, p, b.Prefixes))
		}
	}
	b = b.Only(keep)
	client, closer, err := storageconfig.OpenEtcdClient(ctx, cfg)
	if err != nil {
		return failure(s, fs, err)
	}
	defer closer.Close()
	n, err := backup.LoadStore(ctx, client, b, backup.LoadOptions{Force: *force, Progress: func(n int) { fmt.Fprintf(s.err, "\rloaded %d of %d records", n, len(b.Records)) }})
	fmt.Fprintln(s.err)
	if err != nil {
		return failure(s, fs, err)
	}
	fmt.Fprintf(s.out, "loaded %d records (backup of revision %d, taken %s)\n", n, b.Revision, b.Created.Format("2006-01-02 15:04:05Z"))
	return exitOK
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
