package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/sealrun/sealrun/envelope"
)

const keygenExamples = `  # The RSA message key pair StudioML clients seal requests to:
  printf '%s' "$(openssl rand -hex 24)" > pass && chmod 600 pass
  sealrun keygen rsa --bits 4096 --passphrase-file pass --out keys/

  # An Ed25519 signing key for a client; bind its .pub to a queue prefix:
  sealrun keygen signing --out client/ --comment alice@lab
  cp client/signing_ed25519.pub signing-keys/rmq_cpu_alice_

  # A key pair for the modern HPKE suite (ML-KEM-768+X25519 by default):
  sealrun keygen hpke --out keys/`

func runKeygen(ctx context.Context, s stdio, args []string) int {
	if len(args) > 0 && (args[0] == "rsa" || args[0] == "signing" || args[0] == "hpke") {
		switch args[0] {
		case "rsa":
			return keygenRSA(s, args[1:])
		case "signing":
			return keygenSigning(s, args[1:])
		default:
			return keygenHPKE(s, args[1:])
		}
	}
	fs := newFlags(s, "keygen rsa|signing|hpke [flags]", "Generate message, signing and HPKE key pairs.", keygenExamples)
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	return usageError(s, fs, "want a key kind: rsa, signing or hpke")
}

func keygenRSA(s stdio, args []string) int {
	fs := newFlags(s, "keygen rsa --passphrase-file F --out DIR [flags]",
		"Generate the RSA message key pair: DIR/message.pem (legacy encrypted PEM,\nAES-128-CBC, mode 0600) and DIR/message.pub.pem (PKCS#1, mode 0644).", keygenExamples)
	bits := fs.Int("bits", 4096, "RSA modulus size (at least 2048)")
	passFile := fs.String("passphrase-file", "", "file holding the passphrase (raw bytes; one trailing newline is ignored)")
	out := fs.String("out", "", "directory to write the key pair into (created if missing)")
	force := fs.Bool("force", false, "overwrite existing key files")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return usageError(s, fs, "unexpected argument %q", fs.Arg(0))
	}
	if *passFile == "" || *out == "" {
		return usageError(s, fs, "--passphrase-file and --out are required")
	}
	if *bits < 2048 {
		return usageError(s, fs, "--bits must be at least 2048, got %d", *bits)
	}
	pass, err := readPassphrase(*passFile)
	if err != nil {
		return failure(s, fs, err)
	}
	if len(pass) == 0 {
		return failure(s, fs, fmt.Errorf("passphrase file %s is empty; write one with printf '%%s' SECRET > %s", *passFile, *passFile))
	}
	fmt.Fprintf(s.err, "generating a %d-bit RSA key (this can take a few seconds)...\n", *bits)
	key, err := envelope.GenerateMessageKey(*bits)
	if err != nil {
		return failure(s, fs, err)
	}
	priv, err := key.MarshalEncryptedPEM(pass)
	if err != nil {
		return failure(s, fs, err)
	}
	privPath, pubPath := filepath.Join(*out, "message.pem"), filepath.Join(*out, "message.pub.pem")
	if err := writeKeyFiles(*out, *force, keyFile{privPath, priv, 0o600}, keyFile{pubPath, key.Public().MarshalPKCS1PEM(), 0o644}); err != nil {
		return failure(s, fs, err)
	}
	fmt.Fprintf(s.out, "wrote %s and %s (%s)\n", privPath, pubPath, key.Public())
	return exitOK
}

func keygenSigning(s stdio, args []string) int {
	fs := newFlags(s, "keygen signing --out DIR [flags]",
		"Generate an Ed25519 signing key pair in OpenSSH format: DIR/signing_ed25519\n(mode 0600) and DIR/signing_ed25519.pub (an ssh-ed25519 line). Prints the\nSHA256 fingerprint, as ssh-keygen -l -E sha256 does.", keygenExamples)
	out := fs.String("out", "", "directory to write the key pair into (created if missing)")
	comment := fs.String("comment", "", "comment stored with the key")
	passFile := fs.String("passphrase-file", "", "encrypt the private key with this passphrase (optional)")
	force := fs.Bool("force", false, "overwrite existing key files")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return usageError(s, fs, "unexpected argument %q", fs.Arg(0))
	}
	if *out == "" {
		return usageError(s, fs, "--out is required")
	}
	var pass []byte
	if *passFile != "" {
		var err error
		if pass, err = readPassphrase(*passFile); err != nil {
			return failure(s, fs, err)
		}
	}
	key, err := envelope.GenerateSigningKey()
	if err != nil {
		return failure(s, fs, err)
	}
	priv, err := key.MarshalOpenSSH(*comment, pass)
	if err != nil {
		return failure(s, fs, err)
	}
	pubKey := key.Public()
	line := pubKey.AuthorizedKey()
	if *comment != "" {
		line += " " + *comment
	}
	privPath, pubPath := filepath.Join(*out, "signing_ed25519"), filepath.Join(*out, "signing_ed25519.pub")
	if err := writeKeyFiles(*out, *force, keyFile{privPath, priv, 0o600}, keyFile{pubPath, []byte(line + "\n"), 0o644}); err != nil {
		return failure(s, fs, err)
	}
	fmt.Fprintf(s.out, "%s\n", pubKey.Fingerprint())
	fmt.Fprintf(s.err, "wrote %s and %s\n", privPath, pubPath)
	return exitOK
}

func keygenHPKE(s stdio, args []string) int {
	fs := newFlags(s, "keygen hpke --out DIR [flags]",
		"Generate a key pair for the modern HPKE suite: DIR/hpke.key (mode 0600) and\nDIR/hpke.pub, typed PEM blocks naming the suite and key id.", keygenExamples)
	out := fs.String("out", "", "directory to write the key pair into (created if missing)")
	suiteName := fs.String("suite", string(envelope.SuiteHPKEHybrid), "hpke-mlkem768x25519 (post-quantum hybrid) or hpke-x25519")
	force := fs.Bool("force", false, "overwrite existing key files")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return usageError(s, fs, "unexpected argument %q", fs.Arg(0))
	}
	if *out == "" {
		return usageError(s, fs, "--out is required")
	}
	suite, err := envelope.ParseSuite(*suiteName)
	if err != nil || suite == envelope.SuiteStudioML {
		return usageError(s, fs, "--suite must be hpke-mlkem768x25519 or hpke-x25519")
	}
	key, err := envelope.GenerateHPKEKey(suite)
	if err != nil {
		return failure(s, fs, err)
	}
	priv, err := key.MarshalPEM()
	if err != nil {
		return failure(s, fs, err)
	}
	privPath, pubPath := filepath.Join(*out, "hpke.key"), filepath.Join(*out, "hpke.pub")
	if err := writeKeyFiles(*out, *force, keyFile{privPath, priv, 0o600}, keyFile{pubPath, key.Public().MarshalPEM(), 0o644}); err != nil {
		return failure(s, fs, err)
	}
	fmt.Fprintf(s.out, "wrote %s and %s (%s kid=%s)\n", privPath, pubPath, suite, key.KeyID())
	return exitOK
}

type keyFile struct {
	path string
	data []byte
	mode os.FileMode
}

// writeKeyFiles writes all files or, when one already exists and force is
// off, none: a half-replaced key pair is worse than an error.
func writeKeyFiles(dir string, force bool, files ...keyFile) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if !force {
		for _, f := range files {
			if _, err := os.Lstat(f.path); err == nil {
				return fmt.Errorf("%s already exists; use --force to replace it", f.path)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	for _, f := range files {
		tmp := f.path + ".tmp"
		if err := os.WriteFile(tmp, f.data, f.mode); err != nil {
			return err
		}
		if err := os.Chmod(tmp, f.mode); err != nil { // umask may have narrowed it
			return err
		}
		if err := os.Rename(tmp, f.path); err != nil {
			return err
		}
	}
	return nil
}

// readPassphrase reads a passphrase file for writing a new key: without a
// trailing newline, so the key opens with the passphrase as typed.
func readPassphrase(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c := envelope.PassphraseCandidates(raw)
	return c[len(c)-1], nil
}
