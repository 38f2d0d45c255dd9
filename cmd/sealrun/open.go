package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/sealrun/sealrun/envelope"
)

// Exit codes of "sealrun open" when a message is rejected.
const (
	exitRejectKey       = 3 // signature or key problem
	exitRejectFormat    = 4 // decryption or format problem
	exitRejectClearText = 5 // clear text refused
)

func runOpen(ctx context.Context, s stdio, args []string) int {
	fs := newFlags(s, "open --private-key KEY --signing-keys DIR --queue Q [flags] < message.json",
		`Verify and decrypt a queue message read on stdin, as the runner does.

On success the Request JSON goes to stdout and the exit code is 0. A rejected
message prints one line "rejected: <reason>" on stderr and exits with
  3  signature or key problem (bad/missing signature, no key for the queue,
     unknown HPKE key, wrong queue, replay)
  4  decryption or format problem (tampered, wrong key, malformed)
  5  clear text refused (see --allow-clear-text)
Other failures (unreadable key files, wrong passphrase) exit 1.

DIR holds one file per queue prefix named after the prefix, each an
ssh-ed25519 line (the Kubernetes secret mount layout: dot-names and "info" are
skipped). The key for a queue is the exact match, else the longest prefix.`,
		`  sealrun open --private-key keys/message.pem --passphrase-file pass \
      --signing-keys signing-keys/ --queue rmq_cpu_alice_1 < message.json

  # HPKE and StudioML keys together, as during a migration:
  sealrun open --private-key keys/message.pem --passphrase-file pass \
      --private-key keys/hpke.key --signing-keys signing-keys/ --queue rmq_cpu_alice_1`)
	keyPaths := fs.StringArray("private-key", nil, "RSA message private key or HPKE private key (repeatable)")
	passPath := fs.String("passphrase-file", "", "passphrase of the RSA private key (raw bytes; one trailing newline tolerated)")
	sigDir := fs.String("signing-keys", "", "directory of ssh-ed25519 signing keys, one file per queue prefix")
	queue := fs.String("queue", "", "queue the message was taken from")
	clear := fs.Bool("allow-clear-text", false, "accept an unencrypted Request on this queue")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return usageError(s, fs, "unexpected argument %q; the message is read on stdin", fs.Arg(0))
	}
	if *queue == "" {
		return usageError(s, fs, "--queue is required: it selects the signing key")
	}
	if len(*keyPaths) == 0 && !*clear {
		return usageError(s, fs, "--private-key is required (or --allow-clear-text)")
	}
	if *sigDir == "" && !*clear {
		return usageError(s, fs, "--signing-keys is required")
	}
	o := &envelope.Opener{}
	var pass []byte
	if *passPath != "" {
		var err error
		if pass, err = os.ReadFile(*passPath); err != nil {
			return failure(s, fs, err)
		}
	}
	for _, p := range *keyPaths {
		data, err := os.ReadFile(p)
		if err != nil {
			return failure(s, fs, err)
		}
		if envelope.IsHPKEPrivateKeyPEM(data) {
			k, err := envelope.ParseHPKEPrivateKey(data)
			if err != nil {
				return failure(s, fs, fmt.Errorf("%s: %w", p, err))
			}
			o.HPKEKeys = append(o.HPKEKeys, k)
			continue
		}
		k, err := envelope.ParseMessagePrivateKey(data, pass)
		if err != nil {
			hint := ""
			if errors.Is(err, envelope.ErrPassphrase) && *passPath == "" {
				hint = " (give --passphrase-file)"
			}
			return failure(s, fs, fmt.Errorf("%s: %w%s", p, err, hint))
		}
		o.MessageKeys = append(o.MessageKeys, k)
	}
	if *sigDir != "" {
		keys, err := envelope.LoadSigningKeysDir(*sigDir)
		if err != nil {
			return failure(s, fs, err)
		}
		o.SigningKeys = keys
	}
	if *clear {
		o.ClearText = []string{*queue}
	}
	body, err := readAllLimited(s.in, "message")
	if err != nil {
		return failure(s, fs, err)
	}
	m, err := o.Open(ctx, *queue, body)
	if err != nil {
		if !envelope.Permanent(err) {
			return failure(s, fs, err)
		}
		fmt.Fprintf(s.err, "rejected: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		return rejectCode(err)
	}
	if m.FingerprintMismatch {
		fmt.Fprintf(s.err, "warning: the message's advisory fingerprint differs from the verifying key %s\n", m.Signer)
	}
	out := m.Request
	if len(out) == 0 || out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	s.out.Write(out)
	return exitOK
}

func rejectCode(err error) int {
	switch {
	case errors.Is(err, envelope.ErrClearTextRefused):
		return exitRejectClearText
	case errors.Is(err, envelope.ErrDecrypt), errors.Is(err, envelope.ErrMalformed):
		return exitRejectFormat
	default:
		return exitRejectKey
	}
}
