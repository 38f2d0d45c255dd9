package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	yaml "go.yaml.in/yaml/v3"

	"github.com/sealrun/sealrun/migrate"
	storageconfig "github.com/sealrun/sealrun/storage/config"
	"github.com/sealrun/sealrun/storage/custodia"
	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/overlay"
)

const rotateExamples = `  # 1. let every process learn the new key (it only opens values), then reload them:
  sealrun rotate master-key --config /etc/sealrun/proxy.yaml --new-key /etc/sealrun/master-2.key --prepare
  # 2. make it current and re-encrypt every record:
  sealrun rotate master-key --config /etc/sealrun/proxy.yaml --new-key /etc/sealrun/master-2.key
  # which keys do stored records still name?
  sealrun rotate status --config /etc/sealrun/proxy.yaml`

// runRotate dispatches "sealrun rotate master-key|status|kek".
func runRotate(ctx context.Context, s stdio, args []string) int {
	verb := ""
	if len(args) > 0 {
		verb, args = args[0], args[1:]
	}
	switch verb {
	case "master-key":
		return runRotateMasterKey(ctx, s, args)
	case "status":
		return runRotateStatus(ctx, s, args)
	case "kek":
		return runRotateKEK(ctx, s, args)
	}
	fs := newFlags(s, "rotate master-key|status|kek [flags]",
		"Rotate the overlay's master key (master-key), show which keys stored records\nname (status), or rotate the Vault Transit KEK (kek).", rotateExamples)
	if code, ok := parse(fs, s, append([]string{verb}, args...)); !ok && verb != "" {
		return code
	} else if verb == "--help" || verb == "-h" {
		return exitOK
	}
	return usageError(s, fs, "want master-key, status or kek")
}

func runRotateMasterKey(ctx context.Context, s stdio, args []string) int {
	fs := newFlags(s, "rotate master-key --config FILE --new-key FILE [flags]",
		`Rotate the encrypting overlay's master key online. The new key (created with a
fresh kid, mode 0600, if FILE does not exist) becomes master_key in the
configuration and the previous one moves to old_keys, where it still opens
values; then every record is re-sealed with the new key, with compare-and-set,
in bounded batches. Custodia's values (no kid, no pin) are re-sealed and
pinned too. Reads and writes keep working in every process whose
configuration holds both keys, so first run with --prepare (adds the new key
to old_keys only) and reload every sealrun process; with an embedded etcd,
stop the proxy instead. An interrupted rotation resumes when rerun. At the
end the old key is reported retired when no record names it: remove it from
old_keys once every process has reloaded.`, rotateExamples)
	cfgPath := fs.String("config", "", "storage or proxy configuration (overlay on etcd); it is rewritten")
	newKeyPath := fs.String("new-key", "", "new master key file (created if absent)")
	prepare := fs.Bool("prepare", false, "only add the new key to old_keys, so running processes can open its values after a reload")
	batch := fs.Int("batch", driver.MaxBatch, fmt.Sprintf("records re-sealed per batch (on etcd one atomic compare-and-set write, at most %d)", driver.MaxBatch))
	concurrency := fs.Int("concurrency", 4, "batches in flight (records within a batch on backends that cannot batch)")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if *cfgPath == "" || *newKeyPath == "" || fs.NArg() != 0 {
		return usageError(s, fs, "--config FILE and --new-key FILE are required and no arguments are taken")
	}
	cfg, err := loadStorageConfig(*cfgPath)
	if err != nil {
		return failure(s, fs, err)
	}
	o := cfg.Secrets.Overlay
	if cfg.Secrets.Backend != "overlay" || o == nil || o.Transit != nil {
		return failure(s, fs, errors.New("secrets.backend must be overlay with a master_key (for a Transit KEK use \"sealrun rotate kek\")"))
	}
	newPath, err := filepath.Abs(*newKeyPath)
	if err != nil {
		return failure(s, fs, err)
	}
	newKey, err := loadOrCreateKey(newPath)
	if err != nil {
		return failure(s, fs, err)
	}
	cur, err := overlay.LoadKeyFile(o.MasterKey, false)
	if err != nil {
		return failure(s, fs, fmt.Errorf("current master key: %w", err))
	}
	if cur.ID == newKey.ID && *prepare {
		return failure(s, fs, errors.New("--prepare: the new key is already the master key"))
	}
	if cur.ID != newKey.ID {
		master, old := newPath, append([]string{o.MasterKey}, without(o.OldKeys, newPath)...)
		if *prepare {
			master, old = o.MasterKey, append(without(o.OldKeys, newPath), newPath)
		}
		if err := rewriteOverlayKeys(*cfgPath, master, old); err != nil {
			return failure(s, fs, err)
		}
		if *prepare {
			fmt.Fprintf(s.out, "added key %s to old_keys in %s; reload every sealrun process, then rerun without --prepare\n", newKey.ID, *cfgPath)
			return exitOK
		}
		fmt.Fprintf(s.out, "key %s is now the master key in %s (previous key %s kept in old_keys)\n", newKey.ID, *cfgPath, cur.ID)
		if cfg, err = loadStorageConfig(*cfgPath); err != nil {
			return failure(s, fs, err)
		}
	} else {
		fmt.Fprintf(s.out, "key %s is already the master key: resuming re-encryption\n", newKey.ID)
	}
	parts, err := storageconfig.OpenOverlayParts(ctx, cfg)
	if err != nil {
		return failure(s, fs, err)
	}
	defer parts.Close()
	up, err := migrate.UpgradeCustodia(ctx, parts.Under, parts.Ring, custodia.New(parts.Custodia, parts.Ring, parts.Protection))
	if err != nil {
		return failure(s, fs, err)
	}
	if up > 0 {
		fmt.Fprintf(s.out, "rewrote %d Custodia API record(s) from sealrun's older wrapped form into Custodia's own layout\n", up)
	}
	bar := newProgress(s.err)
	start := time.Now()
	rep, err := overlay.Reencrypt(ctx, parts.Under, parts.Ring, parts.Protection,
		overlay.RotateOptions{BatchSize: *batch, Concurrency: *concurrency, Progress: bar.update})
	bar.finish()
	if err != nil {
		return failure(s, fs, err)
	}
	// The Custodia namespace's records are re-sealed the same way.
	crep, err := overlay.Reencrypt(ctx, parts.Custodia, parts.Ring, parts.Protection,
		overlay.RotateOptions{BatchSize: *batch, Concurrency: *concurrency})
	if err != nil {
		return failure(s, fs, err)
	}
	rep.Merge(crep)
	fmt.Fprintf(s.out, "re-sealed %d of %d record(s) with key %s in %s (%d already current, %d deleted meanwhile)\n",
		rep.Resealed, rep.Total, rep.CurrentKey, time.Since(start).Round(time.Millisecond), rep.AlreadyCurrent, rep.Gone)
	printKeyUsage(s, rep.Referenced)
	for _, f := range rep.Failed {
		fmt.Fprintf(s.err, "sealrun rotate master-key: %s\n", f)
	}
	stale := 0
	for kid, n := range rep.Referenced {
		if kid != rep.CurrentKey {
			stale += n
		}
	}
	if len(rep.Failed) > 0 || stale > 0 {
		fmt.Fprintf(s.err, "sealrun rotate master-key: %d record(s) failed, %d still name an old key; rerun to retry\n", len(rep.Failed), stale)
		return exitError
	}
	fmt.Fprintf(s.out, "old key %s retired: no record names it; remove it from old_keys once every process has reloaded\n", cur.ID)
	return exitOK
}

func runRotateStatus(ctx context.Context, s stdio, args []string) int {
	fs := newFlags(s, "rotate status --config FILE", "Show which master keys the stored records name (by kid; values are not opened).", rotateExamples)
	cfgPath := fs.String("config", "", "storage or proxy configuration (overlay on etcd)")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if *cfgPath == "" || fs.NArg() != 0 {
		return usageError(s, fs, "--config FILE is required")
	}
	cfg, err := loadStorageConfig(*cfgPath)
	if err != nil {
		return failure(s, fs, err)
	}
	parts, err := storageconfig.OpenOverlayParts(ctx, cfg)
	if err != nil {
		return failure(s, fs, err)
	}
	defer parts.Close()
	use, err := overlay.KeyUsage(ctx, parts.Under)
	if err != nil {
		return failure(s, fs, err)
	}
	cuse, err := overlay.KeyUsage(ctx, parts.Custodia)
	if err != nil {
		return failure(s, fs, err)
	}
	for k, n := range cuse {
		use[k] += n
	}
	fmt.Fprintf(s.out, "current key: %s\n", parts.Ring.CurrentID())
	printKeyUsage(s, use)
	return exitOK
}

func printKeyUsage(s stdio, use map[string]int) {
	kids := make([]string, 0, len(use))
	for k := range use {
		kids = append(kids, k)
	}
	sort.Strings(kids)
	for _, k := range kids {
		name := k
		if k == "" {
			name = "(no kid: Custodia's legacy key)"
		}
		fmt.Fprintf(s.out, "  %-45s %d record(s)\n", name, use[k])
	}
}

// loadOrCreateKey loads a key file, creating one with a fresh kid if absent.
// The new key must have a kid: a kid-less key is the legacy (Custodia) key.
func loadOrCreateKey(path string) (overlay.Key, error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		b := make([]byte, 4)
		_, _ = rand.Read(b)
		return overlay.GenerateKeyFile(path, "sealrun-"+time.Now().UTC().Format("20060102")+"-"+hex.EncodeToString(b))
	}
	k, err := overlay.LoadKeyFile(path, false)
	if err != nil {
		return overlay.Key{}, err
	}
	if k.Legacy {
		return overlay.Key{}, fmt.Errorf("new key %s has no kid; add one (\"kid\":\"...\") or let this command create the file", path)
	}
	return k, nil
}

func without(list []string, drop string) []string {
	var out []string
	for _, s := range list {
		if s != drop {
			out = append(out, s)
		}
	}
	return out
}

// rewriteOverlayKeys sets master_key and old_keys in the overlay section of a
// storage config (secrets.overlay) or a proxy config (storage.secrets.overlay),
// keeping everything else, and replaces the file atomically with its mode.
func rewriteOverlayKeys(path, master string, old []string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil || len(doc.Content) == 0 {
		return fmt.Errorf("config %s: not YAML", path)
	}
	root := doc.Content[0]
	if storage := mapGet(root, "storage"); storage != nil {
		root = storage
	}
	ov := mapGet(mapGet(root, "secrets"), "overlay")
	if ov == nil || ov.Kind != yaml.MappingNode {
		return fmt.Errorf("config %s: no secrets.overlay section", path)
	}
	mapSet(ov, "master_key", &yaml.Node{Kind: yaml.ScalarNode, Value: master})
	seq := &yaml.Node{Kind: yaml.SequenceNode}
	for _, p := range old {
		seq.Content = append(seq.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: p})
	}
	mapSet(ov, "old_keys", seq)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	tmp := path + ".rotate.tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), fi.Mode().Perm()); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("replace config: %w", err)
	}
	return nil
}

func mapGet(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func mapSet(m *yaml.Node, key string, v *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, v)
}
