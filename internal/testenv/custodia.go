package testenv

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite": Custodia's SqliteStore file
)

// DebianPython is Debian's python3, which has python3-custodia and
// python3-jwcrypto (a python3 earlier on PATH may not).
const DebianPython = "/usr/bin/python3"

// CustodiaBin is Debian's Custodia 0.6 server (package custodia).
const CustodiaBin = "/usr/sbin/custodia"

// CustodiaServer is a private real Custodia 0.6: a unix socket in its own
// directory, a SqliteStore with an EncryptedOverlay (A256CBC-HS512, pinning)
// over it, a master key Custodia generated itself, and SimpleAuthKeys with
// CPD-101's header names. Custodia forks per connection and reads its
// sqlite file per request, so records written to DB are served at once.
type CustodiaServer struct {
	Dir, Socket, Config string
	// DB is the sqlite file; Table its table (Custodia's default store
	// layout: key PRIMARY KEY, value).
	DB, Table string
	// MasterKey is the JWK file Custodia created (autogen_master_key).
	MasterKey string
	// ID and Key are the API credential (a row custodiaSAK/<ID> = Key in the
	// plain store, as SimpleAuthKeys keeps them).
	ID, Key             string
	IDHeader, KeyHeader string

	cmd    *exec.Cmd
	exited chan struct{}
}

// Custodia starts a real Custodia for this test and stops it at cleanup. A
// machine without Debian's custodia fails the test: never skipped.
func Custodia(t testing.TB) *CustodiaServer {
	t.Helper()
	s, err := StartCustodia(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// StartCustodia starts a server as Custodia does; Stop ends it.
func StartCustodia(ctx context.Context) (*CustodiaServer, error) {
	if _, err := os.Stat(CustodiaBin); err != nil {
		return nil, fmt.Errorf("custodia is not installed (%v): run scripts/install-deps.sh", err)
	}
	// Not t.TempDir(): a unix socket path must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "sealrun-custodia-")
	if err != nil {
		return nil, err
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	s := &CustodiaServer{
		Dir: dir, Socket: filepath.Join(dir, "sock"), Config: filepath.Join(dir, "custodia.conf"),
		DB: filepath.Join(dir, "secrets.db"), Table: "secrets", MasterKey: filepath.Join(dir, "master.key"),
		ID: "app", Key: hex.EncodeToString(b), IDHeader: "CUSTODIA_AUTH_ID", KeyHeader: "CUSTODIA_KEY_ID",
	}
	conf := fmt.Sprintf(`[global]
server_socket = %[1]s/sock
auditlog = %[1]s/audit.log
debug = False

[store:plain]
handler = SqliteStore
dburi = %[1]s/secrets.db
table = secrets

[store:enc]
handler = EncryptedOverlay
backing_store = plain
master_key = %[1]s/master.key
master_enctype = A256CBC-HS512
autogen_master_key = true
secret_protection = pinning

[auth:creds]
handler = SimpleAuthKeys
store = plain
store_namespace = custodiaSAK
id_header = %[2]s
key_header = %[3]s

[authz:paths]
handler = SimplePathAuthz
paths = /. /secrets

[/]
handler = Root
store = enc

[/secrets]
handler = Secrets
store = enc
`, dir, s.IDHeader, s.KeyHeader)
	if err := os.WriteFile(s.Config, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	// The credential row, in the table Custodia would create.
	if err := s.exec(`CREATE TABLE IF NOT EXISTS secrets (key PRIMARY KEY UNIQUE, value)`); err != nil {
		return nil, err
	}
	if err := s.PutRecord("custodiaSAK/"+s.ID, s.Key); err != nil {
		return nil, err
	}
	log, err := os.Create(filepath.Join(dir, "custodia.log"))
	if err != nil {
		return nil, err
	}
	defer log.Close()
	s.cmd = exec.Command(CustodiaBin, s.Config)
	s.cmd.Dir, s.cmd.Stdout, s.cmd.Stderr = dir, log, log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start custodia: %w", err)
	}
	s.exited = make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	if err := s.waitReady(ctx); err != nil {
		s.Stop()
		out, _ := os.ReadFile(filepath.Join(dir, "custodia.log"))
		return nil, fmt.Errorf("custodia did not start: %w\n%s", err, out)
	}
	return s, nil
}

// waitReady polls GET / (authenticated) until Custodia answers 200.
func (s *CustodiaServer) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c := s.HTTPClient()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://custodia/", nil)
		s.Auth(req)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.exited:
			return fmt.Errorf("custodia exited")
		case <-tick.C:
		}
	}
}

// HTTPClient talks to the server's socket. Custodia forks per connection
// and keeps a backlog of 5, so connections are not reused.
func (s *CustodiaServer) HTTPClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			for {
				c, err := d.DialContext(ctx, "unix", s.Socket)
				if err == nil || !strings.Contains(err.Error(), "resource temporarily unavailable") {
					return c, err
				}
				// Custodia's backlog is full: back off briefly and retry.
				select {
				case <-ctx.Done():
					return nil, ctx.Err()
				case <-time.After(5 * time.Millisecond):
				}
			}
		},
	}}
}

// Auth adds the server's credential headers to req.
func (s *CustodiaServer) Auth(req *http.Request) {
	req.Header.Set(s.IDHeader, s.ID)
	req.Header.Set(s.KeyHeader, s.Key)
}

func (s *CustodiaServer) db() (*sql.DB, error) { return sql.Open("sqlite", s.DB) }

func (s *CustodiaServer) exec(q string, args ...any) error {
	db, err := s.db()
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.Exec(q, args...)
	return err
}

// Record returns the stored value of Custodia database key key (e.g.
// "keys/app/db") and whether it exists.
func (s *CustodiaServer) Record(key string) (string, bool, error) {
	db, err := s.db()
	if err != nil {
		return "", false, err
	}
	defer db.Close()
	var v string
	err = db.QueryRow(`SELECT value FROM secrets WHERE key = ?`, key).Scan(&v)
	if err == sql.ErrNoRows {
		return "", false, nil
	}
	return v, err == nil, err
}

// PutRecord writes (or replaces) a record in Custodia's store directly.
func (s *CustodiaServer) PutRecord(key, value string) error {
	return s.exec(`INSERT OR REPLACE INTO secrets VALUES (?, ?)`, key, value)
}

// Stop ends the server's process group and removes its directory.
func (s *CustodiaServer) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		// Custodia forks per connection: end the whole group, which is ours.
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.exited
		}
	}
	_ = os.RemoveAll(s.Dir)
}
