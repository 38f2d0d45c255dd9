package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/internal/testenv"
)

// syncBuffer is a bytes.Buffer safe for the runner's log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRunnerSendResponses drives the three commands end to end against a
// real RabbitMQ: runner consumes, send publishes both suites, responses
// opens the reports; then the runner stops cleanly on cancel.
func TestRunnerSendResponses(t *testing.T) {
	node := testenv.RabbitMQ(t)
	t.Cleanup(testenv.StopRabbitMQ) // the only RabbitMQ test of this package
	url := node.VHost(t)
	dir := t.TempDir()
	const queue = "rmq_cli_work"
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	msgKey, err := envelope.GenerateMessageKey(2048)
	if err != nil {
		t.Fatal(err)
	}
	respKey, err := envelope.GenerateMessageKey(2048)
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := envelope.GenerateSigningKey()
	hk, _ := envelope.GenerateHPKEKey(envelope.SuiteHPKEX25519)
	pass := []byte("pw")
	msgPEM, _ := msgKey.MarshalEncryptedPEM(pass)
	respPEM, _ := respKey.MarshalEncryptedPEM(pass)
	hkPEM, _ := hk.MarshalPEM()
	signPEM, err := signer.MarshalOpenSSH("client", nil)
	if err != nil {
		t.Fatal(err)
	}
	write("keys/message/encryption/ssh-privatekey", msgPEM)
	write("keys/message/passphrase/ssh-passphrase", pass)
	write("keys/message/hpke/k.key", hkPEM)
	write("keys/queues/signing/rmq_cli_", []byte(signer.Public().AuthorizedKey()))
	write("keys/queues/response-encrypt/rmq_cli_", respKey.Public().MarshalPKCS1PEM())
	pub := write("client/message.pub", msgKey.Public().MarshalPKCS1PEM())
	hpub := write("client/hpke.pub", hk.Public().MarshalPEM())
	sig := write("client/signing", signPEM)
	rkey := write("client/response.pem", respPEM)
	rpass := write("client/response.pass", pass)
	req := write("request.json", []byte(`{"experiment": {"key": "cli-1"}, "config": {}}`))
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	httpAddr := l.Addr().String()
	l.Close()
	cfg := write("runner.yaml", []byte(fmt.Sprintf(`
amqp: {url: %q}
queues: [%s]
dead_letter: {}
keys: {source: dir, dir: %s}
executor: {command: [/bin/sh, -c, "cat >/dev/null; echo ran {{.Queue}}"]}
http: {listen: %q}
storage:
  state: {backend: memory}
  secrets: {backend: overlay, overlay: {store: memory, master_key: %s, autogen: true}}
`, url, queue, filepath.Join(dir, "keys"), httpAddr, filepath.Join(dir, "master.key"))))

	// The response queue exists before the runner looks for it.
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	ch, _ := conn.Channel()
	if _, err := ch.QueueDeclare(envelope.ResponseQueue(queue), true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logs := &syncBuffer{}
	done := make(chan int, 1)
	go func() {
		done <- dispatch(ctx, stdio{in: strings.NewReader(""), out: logs, err: logs}, []string{"runner", "--config", cfg})
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case code := <-done:
			t.Fatalf("runner exited %d before ready: %s", code, logs)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("runner not ready after 30s: %s", logs)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, args := range [][]string{
		{"send", "--amqp", url, "--queue", queue, "--public-key", pub, "--signing-key", sig, "--request", req},
		{"send", "--amqp", url, "--queue", queue, "--public-key", hpub, "--signing-key", sig, "--suite", "hpke", "--request", req},
	} {
		if code, out, errOut := runCLI(t, "", args...); code != 0 || !strings.Contains(out, "sent") {
			t.Fatalf("%v: %d %s %s", args[:5], code, out, errOut)
		}
	}
	code, out, errOut := runCLI(t, "", "responses", "--amqp", url, "--queue", queue, "--private-key", rkey,
		"--passphrase-file", rpass, "--count", "6", "--wait", "30s")
	// Per job: Started, the "stop" log (the output), the final Progress.
	if code != 0 || strings.Count(out, `"experimentId":"cli-1"`) != 6 || strings.Count(out, `ran rmq_cli_work`) != 2 ||
		strings.Count(out, `"state":"Success"`) != 2 || strings.Count(out, `"state":"Started"`) != 2 {
		t.Fatalf("responses: %d\n%s\n%s\nrunner log:\n%s", code, out, errOut, logs)
	}
	// A response published twice under one message id (a runner's re-publish
	// after a lost confirm) is printed once.
	dupBody, err := envelope.SealPayload(respKey.Public(), []byte(`{"experimentId":"dup-1"}`))
	if err != nil {
		t.Fatal(err)
	}
	pconn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	pch, _ := pconn.Channel()
	for range 2 {
		if err := pch.PublishWithContext(t.Context(), "", envelope.ResponseQueue(queue), false, false,
			amqp.Publishing{MessageId: "response-amqp-dup-1", Body: []byte(dupBody)}); err != nil {
			t.Fatal(err)
		}
	}
	pconn.Close()
	code, out, errOut = runCLI(t, "", "responses", "--amqp", url, "--queue", queue, "--private-key", rkey,
		"--passphrase-file", rpass, "--wait", "3s")
	if code != 0 || strings.Count(out, `"experimentId":"dup-1"`) != 1 || !strings.Contains(errOut, "skipped 1 duplicate") {
		t.Fatalf("responses with a duplicate: %d\n%s\n%s", code, out, errOut)
	}
	// Nothing consumes StudioML.nobody: send must say so.
	if code, _, errOut := runCLI(t, "", "send", "--amqp", url, "--queue", "rmq_cli_nobody", "--public-key", pub,
		"--signing-key", sig, "--request", req); code != 1 || !strings.Contains(errOut, "no queue is bound") {
		t.Errorf("send to an unbound queue: %d %s", code, errOut)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("runner exited %d on cancel: %s", code, logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("runner did not stop")
	}
	for _, secret := range []string{string(pass), "PRIVATE KEY"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("runner log contains secret material %q", secret)
		}
	}
}
