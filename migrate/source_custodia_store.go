package migrate

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"gopkg.in/ini.v1"
	_ "modernc.org/sqlite" // database/sql driver "sqlite": Custodia's SqliteStore file

	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/overlay"
)

// CustodiaStoreSource reads Custodia's backing store directly: the
// SqliteStore file and, when an EncryptedOverlay is over it, its master key,
// both found in Custodia's own config file. Every record under keys/ is
// read, so nothing needs listing through the API (which Custodia refuses at
// the root) and empty containers are found too.
type CustodiaStoreSource struct {
	// DB and Table are the SqliteStore's dburi and table.
	DB, Table string
	// Seal opens values; nil for a plain (unencrypted) store.
	Seal *overlay.Driver
	// Registry decodes typed models; nil means secrets.Default().
	Registry *secrets.Registry
	config   string
}

// custodiaHandler reports whether handler names Custodia plugin class (as
// "SqliteStore" or "custodia.store.sqlite:SqliteStore").
func custodiaHandler(handler, class string) bool {
	return handler == class || strings.HasSuffix(handler, ":"+class) || strings.HasSuffix(handler, "."+class)
}

var custodiaRef = regexp.MustCompile(`\$\{([^}:]+)(?::([^}]+))?\}`)

// OpenCustodiaStoreSource reads Custodia's config file and opens the store
// its Secrets handler uses.
func OpenCustodiaStoreSource(config string) (*CustodiaStoreSource, error) {
	fail := func(format string, a ...any) error {
		return fmt.Errorf("custodia-store source %s: "+format, append([]any{config}, a...)...)
	}
	f, err := ini.LoadSources(ini.LoadOptions{Insensitive: false, AllowPythonMultilineValues: true}, config)
	if err != nil {
		return nil, fail("not a Custodia config file: %v", err)
	}
	// Custodia's ExtendedInterpolation defaults, for ${configdir} and friends.
	abs, _ := filepath.Abs(config)
	defaults := map[string]string{"configdir": filepath.Dir(abs), "instance": "", "libdir": "/var/lib/custodia",
		"logdir": "/var/log/custodia", "rundir": "/var/run/custodia", "socketdir": "/var/run/custodia"}
	get := func(sec *ini.Section, name, def string) (string, error) {
		if !sec.HasKey(name) {
			return def, nil
		}
		v := sec.Key(name).String()
		var bad string
		v = custodiaRef.ReplaceAllStringFunc(v, func(ref string) string {
			m := custodiaRef.FindStringSubmatch(ref)
			s, k := "global", m[1]
			if m[2] != "" {
				s, k = m[1], m[2]
			}
			if m[2] == "" {
				if d, ok := defaults[k]; ok && !f.Section("global").HasKey(k) {
					return d
				}
			}
			if s == "ENV" {
				return os.Getenv(k)
			}
			if f.HasSection(s) && f.Section(s).HasKey(k) {
				return f.Section(s).Key(k).String()
			}
			bad = ref
			return ref
		})
		if bad != "" {
			return "", fail("[%s] %s: cannot resolve %s; write the path out", sec.Name(), name, bad)
		}
		return strings.ReplaceAll(v, "$$", "$"), nil
	}
	// The store the Secrets handler serves /secrets from.
	storeName := ""
	for _, sec := range f.Sections() {
		if strings.HasPrefix(sec.Name(), "/") && custodiaHandler(sec.Key("handler").String(), "Secrets") {
			storeName = sec.Key("store").String()
			break
		}
	}
	if storeName == "" {
		return nil, fail("no [/secrets] section with handler = Secrets and a store")
	}
	store := func(name string) (*ini.Section, error) {
		sec, err := f.GetSection("store:" + name)
		if err != nil {
			return nil, fail("the Secrets handler's store %q has no [store:%s] section", name, name)
		}
		return sec, nil
	}
	sec, err := store(storeName)
	if err != nil {
		return nil, err
	}
	src := &CustodiaStoreSource{config: config}
	switch h := sec.Key("handler").String(); {
	case custodiaHandler(h, "EncryptedOverlay"), custodiaHandler(h, "EncryptedStore"):
		enctype, _ := get(sec, "master_enctype", "A256CBC-HS512")
		if enctype != "A256CBC-HS512" {
			return nil, fail("[%s] master_enctype %s: only A256CBC-HS512 (Custodia's default) is supported", sec.Name(), enctype)
		}
		keyPath, err := get(sec, "master_key", "")
		if err != nil {
			return nil, err
		}
		if keyPath == "" {
			return nil, fail("[%s] has no master_key", sec.Name())
		}
		key, err := overlay.LoadKeyFile(keyPath, false)
		if err != nil {
			return nil, fail("[%s] master_key: %v", sec.Name(), err)
		}
		ring, err := overlay.NewKeyRing(key)
		if err != nil {
			return nil, fail("%v", err)
		}
		prot, _ := get(sec, "secret_protection", "encrypt")
		p := overlay.Encrypt
		if prot == "pinning" {
			p = overlay.Pinning // pins are required, as Custodia requires them
		} else if prot != "encrypt" && prot != "migrate" {
			return nil, fail("[%s] secret_protection %q: want pinning, migrate or encrypt", sec.Name(), prot)
		}
		src.Seal = overlay.New(nil, ring, p) // only Open is used
		if custodiaHandler(h, "EncryptedOverlay") {
			backing, _ := get(sec, "backing_store", "")
			if sec, err = store(backing); err != nil {
				return nil, err
			}
		}
	case custodiaHandler(h, "SqliteStore"):
	default:
		return nil, fail("[store:%s] handler %q: only SqliteStore, EncryptedStore and EncryptedOverlay over SqliteStore are read directly; use --from custodia:SOCKET --containers ... instead", storeName, h)
	}
	if h := sec.Key("handler").String(); !custodiaHandler(h, "SqliteStore") && !custodiaHandler(h, "EncryptedStore") {
		return nil, fail("[%s] handler %q: only a SqliteStore is read directly; use --from custodia:SOCKET --containers ... instead", sec.Name(), h)
	}
	if src.DB, err = get(sec, "dburi", ""); err != nil {
		return nil, err
	}
	if src.Table, err = get(sec, "table", "CustodiaSecrets"); err != nil {
		return nil, err
	}
	if src.DB == "" {
		return nil, fail("[%s] has no dburi", sec.Name())
	}
	if !regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`).MatchString(src.Table) {
		return nil, fail("[%s] table %q is not a plain SQL name", sec.Name(), src.Table)
	}
	if _, err := os.Stat(src.DB); err != nil {
		return nil, fail("Custodia's database: %v", err)
	}
	return src, nil
}

// Items implements Source: every record under keys/, a container for each
// empty one, a value (opened and pin-checked) for the others.
func (c *CustodiaStoreSource) Items(ctx context.Context) ([]Item, error) {
	reg := c.Registry
	if reg == nil {
		reg = secrets.Default()
	}
	// Read-only, so a running Custodia is never disturbed.
	db, err := sql.Open("sqlite", "file:"+c.DB+"?mode=ro")
	if err != nil {
		return nil, fmt.Errorf("custodia-store source: open Custodia's database %s: %w", c.DB, err)
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT key, value FROM `+c.Table+` WHERE key LIKE 'keys/%' ORDER BY key`)
	if err != nil {
		return nil, fmt.Errorf("custodia-store source: read Custodia's table %s in %s: %w", c.Table, c.DB, err)
	}
	defer rows.Close()
	var items []Item
	for rows.Next() {
		var key string
		var value []byte
		if err := rows.Scan(&key, &value); err != nil {
			return nil, fmt.Errorf("custodia-store source: read Custodia's table %s: %w", c.Table, err)
		}
		name := strings.TrimPrefix(key, "keys/")
		origin := "custodia-store " + key
		switch {
		case name == "":
			continue
		case len(value) == 0:
			items = append(items, Item{Kind: secrets.KindContainer, Key: name, Origin: origin, Model: &secrets.Container{Path: name}})
			continue
		}
		plain := value
		if c.Seal != nil {
			plain, _, err = c.Seal.Open(name, string(value))
			clear(value)
			if err != nil {
				items = append(items, Item{Kind: secrets.KindRaw, Key: name, Origin: origin,
					Err: fmt.Errorf("Custodia's record does not open with its master key: %w", err)})
				continue
			}
		}
		it := custodiaItem(reg, origin, name, plain)
		items = append(items, it)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("custodia-store source: read Custodia's table %s: %w", c.Table, err)
	}
	return items, nil
}

// Close implements Source.
func (c *CustodiaStoreSource) Close() error { return nil }
