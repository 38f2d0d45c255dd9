package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/sealrun/sealrun/envelope"
	"github.com/sealrun/sealrun/runner"
)

func runSend(ctx context.Context, s stdio, args []string) int {
	fs := newFlags(s, "send --amqp URL --queue Q --public-key PUB --signing-key KEY [flags] [< request.json]",
		`Seal a Request JSON and publish it to a runner's queue with publisher confirms.

The request is read from --request or stdin, sealed like "sealrun seal", and
published to the StudioML.topic exchange with routing key StudioML.<queue>
(content type application/json, persistent, mandatory). The command fails if
the broker does not confirm or no queue is bound to the routing key.`,
		`  sealrun send --amqp amqp://guest:guest@127.0.0.1:5672/ --queue rmq_cpu_alice_1 \
      --public-key keys/message.pub.pem --signing-key client/signing_ed25519 < request.json

  sealrun send --amqp-file ~/.sealrun/amqp-url --queue rmq_cpu_alice_1 --suite hpke \
      --public-key keys/hpke.pub --signing-key client/signing_ed25519 --request request.json`)
	url := fs.String("amqp", "", "broker URL (amqp:// or amqps://); prefer --amqp-file to keep the password off the command line")
	urlFile := fs.String("amqp-file", "", "file whose first line is the broker URL")
	queue := fs.String("queue", "", "bare queue name (without StudioML.)")
	pubPath := fs.String("public-key", "", "RSA public key (studioml) or HPKE public key (hpke)")
	sigPath := fs.String("signing-key", "", "Ed25519 private key (OpenSSH or PKCS#8)")
	sigPass := fs.String("signing-passphrase-file", "", "passphrase of an encrypted signing key")
	suiteName := fs.String("suite", "studioml", "studioml or hpke")
	reqPath := fs.String("request", "", "request JSON file (default: stdin)")
	exchange := fs.String("exchange", runner.DefaultExchange, "exchange to publish to")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to wait for the broker")
	sealed := fs.Bool("sealed", false, "the input is an already-sealed wire message (sealrun seal): publish it as is")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return usageError(s, fs, "unexpected argument %q", fs.Arg(0))
	}
	if *queue == "" || (!*sealed && (*pubPath == "" || *sigPath == "")) {
		return usageError(s, fs, "--queue, --public-key and --signing-key are required (keys not with --sealed)")
	}
	brokerURL, err := amqpURL(*url, *urlFile)
	if err != nil {
		return usageError(s, fs, "%v", err)
	}
	suite, err := envelope.ParseSuite(*suiteName)
	if err != nil {
		return usageError(s, fs, "%v", err)
	}
	var pubData []byte
	var signer *envelope.SigningPrivateKey
	if !*sealed {
		if pubData, err = os.ReadFile(*pubPath); err != nil {
			return failure(s, fs, err)
		}
		if signer, err = loadSigner(*sigPath, *sigPass); err != nil {
			return failure(s, fs, err)
		}
	}
	var req []byte
	if *reqPath != "" {
		req, err = os.ReadFile(*reqPath)
	} else {
		req, err = readAllLimited(s.in, "request")
	}
	if err != nil {
		return failure(s, fs, err)
	}
	body := req
	if !*sealed {
		if body, err = sealRequest(req, pubData, *pubPath, signer, suite, *suiteName == "hpke", *queue, ""); err != nil {
			return failure(s, fs, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := publishConfirmed(ctx, brokerURL, *exchange, "StudioML."+*queue, body); err != nil {
		return failure(s, fs, err)
	}
	if *sealed {
		fmt.Fprintf(s.out, "sent sealed message to %s\n", *queue)
	} else {
		fmt.Fprintf(s.out, "sent %s message to %s\n", suite, *queue)
	}
	return exitOK
}

// amqpURL takes the broker URL from a flag or the first line of a file.
func amqpURL(url, file string) (string, error) {
	if (url == "") == (file == "") {
		return "", fmt.Errorf("give exactly one of --amqp and --amqp-file")
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		url, _, _ = strings.Cut(string(b), "\n")
		url = strings.TrimSpace(url)
	}
	if !strings.HasPrefix(url, "amqp://") && !strings.HasPrefix(url, "amqps://") {
		return "", fmt.Errorf("the broker URL must start with amqp:// or amqps://")
	}
	return url, nil
}

// publishConfirmed publishes one persistent, mandatory message and waits for
// the broker's confirm; an unroutable message is an error.
func publishConfirmed(ctx context.Context, url, exchange, key string, body []byte) error {
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(10 * time.Second)})
	if err != nil {
		return fmt.Errorf("connect to broker: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Confirm(false); err != nil {
		return fmt.Errorf("enable publisher confirms: %w", err)
	}
	returns := ch.NotifyReturn(make(chan amqp.Return, 1))
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, true, false,
		amqp.Publishing{ContentType: "application/json", DeliveryMode: amqp.Persistent, Timestamp: time.Now(), Body: body})
	if err != nil {
		return fmt.Errorf("publish to %s: %w", exchange, err)
	}
	ok, err := dc.WaitContext(ctx)
	if err != nil {
		return fmt.Errorf("wait for the broker's confirm: %w", err)
	}
	if !ok {
		return fmt.Errorf("the broker refused the message (nack)")
	}
	// A return arrives before the confirm of the same message.
	select {
	case r := <-returns:
		return fmt.Errorf("no queue is bound to routing key %q on %s (%s): is a runner consuming that queue?", key, exchange, r.ReplyText)
	default:
	}
	return nil
}
