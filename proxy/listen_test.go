package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// With a group, the socket is 0660 and group-owned, and a directory the
// proxy creates for it is group-owned too, so the group can reach it.
func TestListenUnixGroup(t *testing.T) {
	g, err := user.LookupGroupId(strconv.Itoa(os.Getgid()))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "run", "s.sock")
	ln, err := ListenUnix(path, 0o660, g.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for p, want := range map[string]os.FileMode{path: 0o660, filepath.Dir(path): 0o750} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want || int(fi.Sys().(*syscall.Stat_t).Gid) != os.Getgid() {
			t.Errorf("%s: mode %v gid %d, want %v gid %d", p, fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Gid, want, os.Getgid())
		}
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("connect through the moved socket: %v", err)
	}
	c.Close()
	if _, err := ListenUnix(filepath.Join(t.TempDir(), "s.sock"), 0o660, "no-such-group-sealrun"); err == nil || !strings.Contains(err.Error(), "socket group") {
		t.Fatalf("unknown group: %v", err)
	}
}

func TestListenUnixStaleAndLive(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := ListenUnix(path, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	// A live server answers: a second proxy must not steal its path.
	if _, err := ListenUnix(path, 0, ""); err == nil || !strings.Contains(err.Error(), "another server") {
		t.Fatalf("second listener on a live socket: %v", err)
	}
	// A socket it cannot probe (here: no permission to connect) may be a
	// live server's: left alone, with an error saying so.
	if os.Getuid() != 0 { // root may connect anyway, and then sees it live
		os.Chmod(path, 0)
		if _, err := ListenUnix(path, 0, ""); err == nil || !strings.Contains(err.Error(), "cannot tell") {
			t.Fatalf("listener on a socket it may not probe: %v", err)
		}
		os.Chmod(path, 0o600)
	}
	// A dead server's socket file is stale: replaced.
	ln.(*unixListener).UnixListener.Close() // a crash: the file stays
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket should still exist: %v", err)
	}
	ln2, err := ListenUnix(path, 0o660, "")
	if err != nil {
		// 0660 needs no group at this level; the config insists on one.
		t.Fatalf("stale socket not replaced: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("replaced socket: %v %v, want mode 0660", fi.Mode(), err)
	}
	// Closing removes the socket and leaves nothing else behind.
	ln2.Close()
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 0 {
		t.Fatalf("left in the socket directory after Close: %v", ents)
	}
	// A regular file is never removed.
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, []byte("x"), 0o600)
	if _, err := ListenUnix(file, 0, ""); err == nil {
		t.Fatal("replaced a regular file")
	}
}

// certs makes a CA and two leaf certificates signed by it.
func certs(t *testing.T, dir string) (ca, serverCert, serverKey, clientCert, clientKey string) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
		return p
	}
	leaf := func(name string, usage x509.ExtKeyUsage) (string, string) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, _ := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		kder, _ := x509.MarshalECPrivateKey(k)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kder)
	}
	ca = write("ca.pem", "CERTIFICATE", caDER)
	serverCert, serverKey = leaf("server", x509.ExtKeyUsageServerAuth)
	clientCert, clientKey = leaf("client", x509.ExtKeyUsageClientAuth)
	return
}

// The TCP listener speaks TLS 1.3 only and requires a client certificate
// signed by the configured CA.
func TestTLSListenerRequiresClientCert(t *testing.T) {
	dir := t.TempDir()
	ca, sc, sk, cc, ck := certs(t, dir)
	cfg, err := serverTLS(&TCP{CertFile: sc, KeyFile: sk, ClientCAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	// allowed_uids limits the unix socket only (no uid here may use it).
	f := startProxy(t, overlayStore(t), func(o *Options) { o.AllowedUIDs = []int{os.Getuid() + 4242} })
	if code, _ := f.raw(t, "GET", "/secrets/", f.admin(), ""); code != http.StatusForbidden {
		t.Fatalf("unix peer outside allowed_uids: %d, want 403", code)
	}
	hs := f.srv.HTTPServer()
	go hs.Serve(ln)
	defer hs.Close()
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(ca)
	pool.AppendCertsFromPEM(caPEM)
	url := "https://" + ln.Addr().String() + "/secrets/"
	do := func(tc *tls.Config) (int, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 5 * time.Second}
		req, _ := http.NewRequest("GET", url, nil)
		for k, v := range f.admin() {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	cert, _ := tls.LoadX509KeyPair(cc, ck)
	if code, err := do(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}); err != nil || code != 200 {
		t.Fatalf("with client cert: %d %v", code, err)
	}
	if _, err := do(&tls.Config{RootCAs: pool}); err == nil {
		t.Fatal("connection without a client certificate succeeded")
	}
	if _, err := do(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MaxVersion: tls.VersionTLS12}); err == nil {
		t.Fatal("TLS 1.2 accepted")
	}
}

// A client that never finishes its headers is disconnected.
func TestSlowClientIsDisconnected(t *testing.T) {
	f := startProxy(t, overlayStore(t), nil)
	c, err := net.Dial("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("GET /secrets/ HTTP/1.1\r\nHost: x\r\n")) // and then nothing
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	start := time.Now()
	buf := make([]byte, 512)
	for {
		if _, err := c.Read(buf); err != nil {
			break
		}
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("slow client held the connection for %v", d)
	}
}

// Sockets passed by systemd: a TCP one is served only over TLS with client
// certificates, and refused without listen.tcp; listen.tcp is not dropped
// when systemd passes only the unix socket.
func TestActivatedListeners(t *testing.T) {
	dir := t.TempDir()
	ca, sc, sk, _, _ := certs(t, dir)
	tcpConf := &TCP{Address: "127.0.0.1:0", CertFile: sc, KeyFile: sk, ClientCAFile: ca}
	listen := func() (unix, tcp net.Listener) {
		u, err := net.Listen("unix", filepath.Join(dir, fmt.Sprintf("a%d.sock", time.Now().UnixNano())))
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return u, l
	}

	u, l := listen()
	if _, err := (&Config{}).withTCP([]net.Listener{u, l}); err == nil || !strings.Contains(err.Error(), "listen.tcp") {
		t.Fatalf("a passed TCP socket without listen.tcp: %v, want an error naming listen.tcp", err)
	}
	if _, err := l.Accept(); err == nil {
		t.Fatal("a refused listener was left open")
	}

	u, l = listen()
	ls, err := (&Config{Listen: Listen{TCP: tcpConf}}).withTCP([]net.Listener{u, l})
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 || ls[0] != u {
		t.Fatalf("listeners %v, want the unix socket and the TLS-wrapped TCP socket", ls)
	}
	go func() {
		if c, err := ls[1].Accept(); err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	// A plain-text client gets no HTTP answer: the socket speaks TLS.
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	reply, _ := io.ReadAll(c)
	c.Close()
	if strings.HasPrefix(string(reply), "HTTP/") {
		t.Fatalf("activated TCP socket answered plain HTTP: %q", reply)
	}
	for _, l := range ls {
		l.Close()
	}

	u, _ = listen()
	ls, err = (&Config{Listen: Listen{TCP: tcpConf}}).withTCP([]net.Listener{u})
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 2 {
		t.Fatalf("%d listeners, want the passed unix socket and listen.tcp's own", len(ls))
	}
	for _, l := range ls {
		l.Close()
	}
}

// Closing a listener whose socket file was replaced (removed by hand, a new
// server started) leaves the new server's socket alone.
func TestListenUnixCloseKeepsReplacement(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	a, err := ListenUnix(path, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	b, err := ListenUnix(path, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a.Close()
	go func() {
		if c, err := b.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("the new server's socket after the old one closed: %v", err)
	}
	c.Close()
}
