package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

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
	// A dead server's socket file is stale: replaced.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket should still exist: %v", err)
	}
	ln2, err := ListenUnix(path, 0o660, "")
	if err == nil {
		ln2.Close()
	}
	if err != nil {
		// 0660 needs no group at this level; the config insists on one.
		t.Fatalf("stale socket not replaced: %v", err)
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
	f := startProxy(t, overlayStore(t), nil)
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
