package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/sealrun/sealrun/envelope"
)

// maxMessage bounds what seal and open read from stdin.
const maxMessage = 64 << 20

func readAllLimited(r io.Reader, what string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxMessage+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxMessage {
		return nil, fmt.Errorf("%s on stdin is larger than %d MiB", what, maxMessage>>20)
	}
	return b, nil
}

func runSeal(_ context.Context, s stdio, args []string) int {
	fs := newFlags(s, "seal --public-key PUB --signing-key KEY [flags] < request.json > message.json",
		`Encrypt and sign a Request JSON read on stdin; write the queue message on stdout.

The StudioML suite (default) writes exactly what the StudioML Python client
publishes. The HPKE suite needs an HPKE public key (sealrun keygen hpke) and the
queue name, which it binds into the signed header.`,
		`  sealrun seal --public-key keys/message.pub.pem \
      --signing-key client/signing_ed25519 < request.json > message.json

  sealrun seal --suite hpke --public-key keys/hpke.pub \
      --signing-key client/signing_ed25519 --queue rmq_cpu_alice_1 < request.json`)
	pubPath := fs.String("public-key", "", "RSA public key (PKCS#1, SPKI or ssh-rsa) or HPKE public key")
	sigPath := fs.String("signing-key", "", "Ed25519 private key (OpenSSH or PKCS#8)")
	sigPass := fs.String("signing-passphrase-file", "", "passphrase of an encrypted signing key")
	suiteName := fs.String("suite", "studioml", "studioml or hpke (the HPKE KEM follows the public key)")
	queue := fs.String("queue", "", "queue the message is for (required with --suite hpke)")
	id := fs.String("id", "", "HPKE message id (random when empty)")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return usageError(s, fs, "unexpected argument %q; the request is read on stdin", fs.Arg(0))
	}
	if *pubPath == "" || *sigPath == "" {
		return usageError(s, fs, "--public-key and --signing-key are required")
	}
	suite, err := envelope.ParseSuite(*suiteName)
	if err != nil {
		return usageError(s, fs, "%v", err)
	}
	if suite != envelope.SuiteStudioML && *queue == "" {
		return usageError(s, fs, "--queue is required with --suite %s", *suiteName)
	}
	pubData, err := os.ReadFile(*pubPath)
	if err != nil {
		return failure(s, fs, err)
	}
	signer, err := loadSigner(*sigPath, *sigPass)
	if err != nil {
		return failure(s, fs, err)
	}
	req, err := readAllLimited(s.in, "request")
	if err != nil {
		return failure(s, fs, err)
	}
	msg, err := sealRequest(req, pubData, *pubPath, signer, suite, *suiteName == "hpke", *queue, *id)
	if err != nil {
		var ue usageErr
		if errors.As(err, &ue) {
			return usageError(s, fs, "%v", err)
		}
		return failure(s, fs, err)
	}
	s.out.Write(append(msg, '\n'))
	return exitOK
}

func loadSigner(path, passPath string) (*envelope.SigningPrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pass []byte
	if passPath != "" {
		if pass, err = os.ReadFile(passPath); err != nil {
			return nil, err
		}
	}
	k, err := envelope.ParseSigningPrivateKey(data, pass)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// usageErr marks a sealRequest error as the caller's flags' fault (exit 2).
type usageErr struct{ error }

// sealRequest seals req with the suite's public key (pubData, read from
// pubPath) for "seal" and "send". anyHPKE accepts whichever HPKE KEM the key
// has (--suite hpke); otherwise a named HPKE suite must match the key.
func sealRequest(req, pubData []byte, pubPath string, signer *envelope.SigningPrivateKey, suite envelope.Suite, anyHPKE bool, queue, id string) ([]byte, error) {
	if suite == envelope.SuiteStudioML {
		pub, err := envelope.ParseMessagePublicKey(pubData)
		if err != nil {
			return nil, fmt.Errorf("%s: %w (use an HPKE public key with --suite hpke)", pubPath, err)
		}
		return envelope.SealStudioML(req, pub, signer)
	}
	pub, err := envelope.ParseHPKEPublicKey(pubData)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", pubPath, err)
	}
	if !anyHPKE && pub.Suite() != suite {
		return nil, usageErr{fmt.Errorf("--suite %s does not match the public key's suite %s", suite, pub.Suite())}
	}
	return envelope.SealHPKE(req, pub, signer, envelope.SealHPKEOptions{Queue: queue, ID: id})
}
