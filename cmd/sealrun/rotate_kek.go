package main

import (
	"context"
	"fmt"

	storageconfig "github.com/sealrun/sealrun/storage/config"
	"github.com/sealrun/sealrun/storage/kek"
)

// runRotateKEK is "sealrun rotate kek": rotate the Transit KEK and re-wrap
// every stored DEK. Wired as the kek subcommand of "sealrun rotate".
func runRotateKEK(ctx context.Context, s stdio, args []string) int {
	fs := newFlags(s, "rotate kek --config FILE [--rewrap-only]",
		`Rotate the Vault Transit key that wraps the overlay's data keys (DEKs),
then re-wrap every stored DEK with the new key version. Data records are not
touched (they are sealed by the DEKs, which do not change), running proxies
keep their DEKs in memory, and a proxy starting meanwhile unwraps either the
old or the new wrap: no read fails during the rotation.

Vault is reached and logged in to as the configuration's secrets.vault says;
the token needs the policy deploy/vault/sealrun-kek-rotate.hcl (read the key,
rotate, rewrap; it cannot decrypt). The wrapped DEKs are read from the etcd
named by state.etcd; with an embedded etcd, stop the proxy first.

At the end the command reports the oldest key version any stored DEK still
needs, i.e. how far Transit's min_decryption_version can safely be raised.
Backups of the DEK store taken before the rotation need the older versions.
If interrupted, run it again, or with --rewrap-only to finish without adding
another key version.`,
		`  sealrun rotate kek --config /etc/sealrun/proxy.yaml

  # finish an interrupted rotation without rotating again:
  sealrun rotate kek --config /etc/sealrun/proxy.yaml --rewrap-only

  # then, as a Vault administrator, when the report says it is safe:
  vault write transit/keys/sealrun-kek/config min_decryption_version=N`)
	configPath := fs.String("config", "", "storage or proxy configuration with secrets.overlay.transit")
	rewrapOnly := fs.Bool("rewrap-only", false, "re-wrap DEKs to the key's latest version without rotating it")
	if code, ok := parse(fs, s, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return usageError(s, fs, "unexpected argument %q", fs.Arg(0))
	}
	if *configPath == "" {
		return usageError(s, fs, "--config is required")
	}
	cfg, err := loadStorageConfig(*configPath)
	if err != nil {
		return failure(s, fs, err)
	}
	k, err := storageconfig.OpenKEK(ctx, cfg, nil)
	if err != nil {
		return failure(s, fs, err)
	}
	defer k.Close()
	t := cfg.Secrets.Overlay.Transit
	var rep kek.Report
	if *rewrapOnly {
		rep, err = kek.Rewrap(ctx, k.Store, k.Transit)
	} else {
		rep, err = kek.Rotate(ctx, k.Store, k.Transit)
	}
	if err != nil {
		return failure(s, fs, err)
	}
	if rep.Rotated {
		fmt.Fprintf(s.out, "rotated %s to version %d\n", rep.KEK, rep.Latest)
	}
	fmt.Fprintf(s.out, "re-wrapped %d DEK(s), %d already at version %d; data records untouched\n", rep.Rewrapped, rep.Current, rep.Latest)
	switch safe := rep.SafeMinDecryption(); {
	case rep.Rewrapped+rep.Current == 0:
		fmt.Fprintln(s.out, "no DEKs stored yet")
	case safe > rep.MinDecryption:
		fmt.Fprintf(s.out, "min_decryption_version is %d; raising it to %d is safe for every stored DEK (not for backups older than this rotation):\n  vault write %s/config min_decryption_version=%d\n",
			rep.MinDecryption, safe, t.Mount+"/keys/"+t.Key, safe)
	default:
		fmt.Fprintf(s.out, "min_decryption_version is %d: nothing to raise\n", rep.MinDecryption)
	}
	return exitOK
}
