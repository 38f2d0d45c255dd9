package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealrun/sealrun/storage/overlay"
)

// StoreFormat is the store backup's format value.
const StoreFormat = "sealrun-store-backup/1"

// maxStoreBackup bounds what Decode reads (etcd's default quota is 2 GiB,
// sealrun stores are far smaller).
const maxStoreBackup = 1 << 30

// StoreBackup is a consistent export of the records under some etcd
// prefixes, all read at one revision. Values are exported as stored: the
// secrets prefixes hold only sealed values (checked on export and on load),
// so the file holds no plaintext secret.
type StoreBackup struct {
	Format  string    `json:"format"`
	Created time.Time `json:"created"`
	// Revision is the etcd revision every record was read at.
	Revision int64 `json:"revision"`
	// Prefixes are the exported etcd prefixes (state, secrets, wrapped DEKs).
	Prefixes []string `json:"prefixes"`
	// Sealed are the prefixes whose values must be sealed overlay values.
	Sealed  []string `json:"sealed"`
	Records []Record `json:"records"`
	// SHA256 is the hash of the records' JSON: a damaged file is refused.
	SHA256 string `json:"sha256"`
}

// Record is one etcd key as it was at Revision.
type Record struct {
	Key            string `json:"key"`
	Value          []byte `json:"value"`
	CreateRevision int64  `json:"create_revision"`
	ModRevision    int64  `json:"mod_revision"`
	Version        int64  `json:"version"`
}

// Prefixes says what to export: every prefix, and which of them hold
// secrets (their values must be sealed).
type Prefixes struct {
	All    []string
	Sealed []string
}

func (b *StoreBackup) sum() (string, error) {
	data, err := json.Marshal(b.Records)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:]), nil
}

// pageSize is how many records one range read returns.
const pageSize = 500

// ExportStore reads every record under p.All at a single revision. progress,
// if set, is called after each page with the count so far.
func ExportStore(ctx context.Context, kv clientv3.KV, p Prefixes, progress func(n int)) (*StoreBackup, error) {
	if err := checkPrefixes(p); err != nil {
		return nil, err
	}
	head, err := kv.Get(ctx, p.All[0], clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return nil, fmt.Errorf("read store revision: %w", err)
	}
	b := &StoreBackup{Format: StoreFormat, Created: time.Now().UTC().Truncate(time.Second), Revision: head.Header.Revision,
		Prefixes: p.All, Sealed: p.Sealed}
	for _, prefix := range p.All {
		end := clientv3.GetPrefixRangeEnd(prefix)
		from := prefix
		for {
			resp, err := kv.Get(ctx, from, clientv3.WithRange(end), clientv3.WithRev(b.Revision), clientv3.WithLimit(pageSize),
				clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
			if err != nil {
				return nil, fmt.Errorf("read %s at revision %d: %w (if it was compacted meanwhile, run the backup again)", prefix, b.Revision, err)
			}
			for _, k := range resp.Kvs {
				b.Records = append(b.Records, Record{Key: string(k.Key), Value: k.Value, CreateRevision: k.CreateRevision,
					ModRevision: k.ModRevision, Version: k.Version})
			}
			if progress != nil {
				progress(len(b.Records))
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	if err := b.checkRecords(); err != nil {
		return nil, err
	}
	if b.SHA256, err = b.sum(); err != nil {
		return nil, err
	}
	return b, nil
}

func checkPrefixes(p Prefixes) error {
	if len(p.All) == 0 {
		return errors.New("no etcd prefixes to back up")
	}
	for i, a := range p.All {
		if !strings.HasSuffix(a, "/") {
			return fmt.Errorf("prefix %q must end in '/'", a)
		}
		for _, o := range p.All[i+1:] {
			if strings.HasPrefix(a, o) || strings.HasPrefix(o, a) {
				return fmt.Errorf("prefixes %q and %q overlap", a, o)
			}
		}
	}
	for _, s := range p.Sealed {
		if !contains(p.All, s) {
			return fmt.Errorf("sealed prefix %q is not among the prefixes", s)
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// checkRecords checks that every key is under one prefix, keys are unique,
// and every value under a sealed prefix is a sealed value: a plaintext never
// goes into or comes out of a backup.
func (b *StoreBackup) checkRecords() error {
	seen := map[string]bool{}
	for i, r := range b.Records {
		if seen[r.Key] {
			return fmt.Errorf("record %d: key %q appears twice", i+1, r.Key)
		}
		seen[r.Key] = true
		prefix := ""
		for _, p := range b.Prefixes {
			if strings.HasPrefix(r.Key, p) && len(r.Key) > len(p) {
				prefix = p
			}
		}
		if prefix == "" {
			return fmt.Errorf("record %d: key %q is under none of the prefixes %q", i+1, r.Key, b.Prefixes)
		}
		if contains(b.Sealed, prefix) && !sealedValue(r.Key, prefix, r.Value) {
			return fmt.Errorf("record %q under the secrets prefix %s is not a sealed value: refusing to put a plaintext in a backup", r.Key, prefix)
		}
	}
	return nil
}

// sealedValue reports whether value is a sealed overlay value (a compact JWE)
// or, under a DEK prefix, a wrapped DEK record (which names its KEK and
// holds only its ciphertext).
func sealedValue(key, prefix string, value []byte) bool {
	if _, err := overlay.KeyID(string(value)); err == nil {
		return true
	}
	var dek struct {
		KID     string `json:"kid"`
		KEK     string `json:"kek"`
		Wrapped string `json:"wrapped"`
	}
	d := json.NewDecoder(bytes.NewReader(value))
	d.DisallowUnknownFields()
	return strings.HasPrefix(key, prefix+"deks/") && d.Decode(&dek) == nil && dek.KEK != "" && strings.HasPrefix(dek.Wrapped, "vault:v")
}

// Only is the backup restricted to the given prefixes (a subset of its own).
func (b *StoreBackup) Only(prefixes []string) *StoreBackup {
	cp := *b
	cp.Prefixes, cp.Sealed, cp.Records = nil, nil, nil
	for _, p := range b.Prefixes {
		if contains(prefixes, p) {
			cp.Prefixes = append(cp.Prefixes, p)
		}
	}
	for _, p := range b.Sealed {
		if contains(prefixes, p) {
			cp.Sealed = append(cp.Sealed, p)
		}
	}
	for _, r := range b.Records {
		for _, p := range cp.Prefixes {
			if strings.HasPrefix(r.Key, p) {
				cp.Records = append(cp.Records, r)
				break
			}
		}
	}
	return &cp
}

// Encode writes the backup as indented JSON.
func (b *StoreBackup) Encode(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	return enc.Encode(b)
}

// DecodeStore reads and checks a backup: unknown fields, another format,
// a damaged record list, keys outside the prefixes and unsealed secrets are
// all refused.
func DecodeStore(r io.Reader) (*StoreBackup, error) {
	d := json.NewDecoder(io.LimitReader(r, maxStoreBackup))
	d.DisallowUnknownFields()
	var b StoreBackup
	if err := d.Decode(&b); err != nil {
		return nil, fmt.Errorf("not a sealrun store backup: %w", err)
	}
	if d.More() {
		return nil, errors.New("not a sealrun store backup: data after the JSON object")
	}
	if b.Format != StoreFormat {
		return nil, fmt.Errorf("backup format %q; this sealrun reads %s", b.Format, StoreFormat)
	}
	if err := checkPrefixes(Prefixes{All: b.Prefixes, Sealed: b.Sealed}); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	sum, err := b.sum()
	if err != nil {
		return nil, err
	}
	if sum != b.SHA256 {
		return nil, errors.New("backup: the records do not match the file's sha256: the file is damaged or was edited; use another copy")
	}
	if err := b.checkRecords(); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	return &b, nil
}

// LoadOptions tune LoadStore.
type LoadOptions struct {
	// Force loads into prefixes that already hold records: backup records
	// replace keys of the same name, other keys stay.
	Force bool
	// Progress, if set, is called after each batch with the count so far.
	Progress func(n int)
}

// loadBatch is records per transaction, within etcd's default --max-txn-ops.
const loadBatch = 64

// LoadStore writes b's records. Without Force every target prefix must be
// empty, and each record is written only if its key is still absent, so a
// process writing meanwhile is never overwritten. The etcd revisions are new
// ones: etcd assigns them.
func LoadStore(ctx context.Context, kv clientv3.KV, b *StoreBackup, o LoadOptions) (int, error) {
	if !o.Force {
		for _, p := range b.Prefixes {
			resp, err := kv.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithCountOnly())
			if err != nil {
				return 0, fmt.Errorf("check %s is empty: %w", p, err)
			}
			if resp.Count > 0 {
				return 0, fmt.Errorf("the target store already holds %d records under %s: load into an empty store (a new etcd or data_dir), or pass --force to merge (backup records replace same-named keys)", resp.Count, p)
			}
		}
	}
	recs := append([]Record(nil), b.Records...)
	sort.Slice(recs, func(i, j int) bool { return recs[i].Key < recs[j].Key })
	n := 0
	for len(recs) > 0 {
		batch := recs[:min(loadBatch, len(recs))]
		recs = recs[len(batch):]
		var cmps []clientv3.Cmp
		ops := make([]clientv3.Op, len(batch))
		for i, r := range batch {
			if !o.Force {
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(r.Key), "=", 0))
			}
			ops[i] = clientv3.OpPut(r.Key, string(r.Value))
		}
		resp, err := kv.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return n, fmt.Errorf("load records from %q: %w (%d of %d loaded; rerun with --force to finish)", batch[0].Key, err, n, len(b.Records))
		}
		if !resp.Succeeded {
			return n, fmt.Errorf("load records from %q: a key was written meanwhile by another process; stop every sealrun process on this store (%d of %d loaded; rerun with --force to finish)", batch[0].Key, n, len(b.Records))
		}
		n += len(batch)
		if o.Progress != nil {
			o.Progress(n)
		}
	}
	return n, nil
}
