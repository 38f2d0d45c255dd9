package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
)

func runResponses(ctx context.Context, s stdio, args []string) int {
	fs := newFlags(s, "responses --amqp URL --queue Q --private-key KEY [flags]",
		`Read and open the sealed reports a runner publishes for a queue.

Consumes <queue>_response (declaring it, durable, if it does not exist, so
runners start answering), decrypts each report with the response private key
and prints one JSON report per line. Messages are acknowledged once printed;
one that cannot be opened is printed as an error and left on the queue.

A runner whose publisher confirm was lost (broker crash) publishes the same
response again under the same AMQP message id; a copy whose message id was
already printed in this run is acknowledged and skipped (counted on stderr),
so each job's report is printed once.`,
		`  sealrun responses --amqp amqp://guest:guest@127.0.0.1:5672/ --queue rmq_cpu_alice_1 \
      --private-key client/response.pem --passphrase-file client/response.pass --count 3

  sealrun responses --amqp-file ~/.sealrun/amqp-url --queue rmq_cpu_alice_1 \
      --private-key client/response.pem --passphrase-file client/response.pass --wait 10m`)
	url := fs.String("amqp", "", "broker URL (amqp:// or amqps://)")
	urlFile := fs.String("amqp-file", "", "file whose first line is the broker URL")
	queue := fs.String("queue", "", "bare request queue name; reports are read from <queue>_response")
	keyPath := fs.String("private-key", "", "RSA private key the responses are sealed to")
	passPath := fs.String("passphrase-file", "", "passphrase of the private key")
	count := fs.Int("count", 0, "stop after this many reports (0: until --wait passes)")
	wait := fs.Duration("wait", 30*time.Second, "stop when no report arrived for this long")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return usageError(s, fs, "unexpected argument %q", fs.Arg(0))
	}
	if *queue == "" || *keyPath == "" {
		return usageError(s, fs, "--queue and --private-key are required")
	}
	brokerURL, err := amqpURL(*url, *urlFile)
	if err != nil {
		return usageError(s, fs, "%v", err)
	}
	pem, err := os.ReadFile(*keyPath)
	if err != nil {
		return failure(s, fs, err)
	}
	var pass []byte
	if *passPath != "" {
		if pass, err = os.ReadFile(*passPath); err != nil {
			return failure(s, fs, err)
		}
	}
	key, err := envelope.ParseMessagePrivateKey(pem, pass)
	if err != nil {
		return failure(s, fs, fmt.Errorf("%s: %w", *keyPath, err))
	}
	conn, err := amqp.DialConfig(brokerURL, amqp.Config{Dial: amqp.DefaultDial(10 * time.Second)})
	if err != nil {
		return failure(s, fs, fmt.Errorf("connect to broker: %w", err))
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return failure(s, fs, err)
	}
	rq := envelope.ResponseQueue(*queue)
	if _, err := ch.QueueDeclare(rq, true, false, false, false, nil); err != nil {
		return failure(s, fs, fmt.Errorf("declare %s: %w", rq, err))
	}
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ds, err := ch.ConsumeWithContext(cctx, rq, "", false, false, false, false, nil)
	if err != nil {
		return failure(s, fs, fmt.Errorf("consume %s: %w", rq, err))
	}
	keys := []*envelope.MessagePrivateKey{key}
	got, failed, dups := 0, 0, 0
	// Message ids printed so far. Runners give every response a stable one
	// (response-<job id>); a response without one is never a duplicate.
	printed := map[string]bool{}
	defer func() {
		if dups > 0 {
			fmt.Fprintf(s.err, "sealrun responses: skipped %d duplicate copies (same message id)\n", dups)
		}
	}()
	idle := time.NewTimer(*wait)
	defer idle.Stop()
	for *count == 0 || got < *count {
		select {
		case <-ctx.Done():
			return exitOK
		case <-idle.C:
			if *count > 0 {
				return failure(s, fs, fmt.Errorf("got %d of %d reports before %s without one", got, *count, *wait))
			}
			return exitOK
		case d, ok := <-ds:
			if !ok {
				return failure(s, fs, fmt.Errorf("the broker closed the consumer on %s", rq))
			}
			idle.Reset(*wait)
			if d.MessageId != "" && printed[d.MessageId] {
				dups++
				_ = d.Ack(false)
				continue
			}
			plain, err := envelope.OpenPayload(keys, string(d.Body))
			if err != nil {
				failed++
				fmt.Fprintf(s.err, "sealrun responses: message %d on %s: %v\n", d.DeliveryTag, rq, err)
				_ = d.Nack(false, false)
				continue
			}
			var compact json.RawMessage = plain
			if b, err := json.Marshal(compact); err == nil {
				plain = b
			}
			fmt.Fprintf(s.out, "%s\n", plain)
			_ = d.Ack(false)
			if d.MessageId != "" {
				printed[d.MessageId] = true
			}
			got++
		}
	}
	if failed > 0 {
		return exitError
	}
	return exitOK
}
