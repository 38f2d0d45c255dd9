package main

import (
	"context"
	"fmt"
	"os"

	"github.com/sealrun/sealrun/proxy/audit"
)

func runAudit(_ context.Context, s stdio, args []string) int {
	if len(args) == 0 || args[0] != "verify" {
		fs := newFlags(s, "audit verify FILE", "Check the secrets proxy's audit log.", auditExamples)
		if code, ok := parse(fs, s, args); !ok {
			return code
		}
		return usageError(s, fs, "want a subcommand: verify")
	}
	fs := newFlags(s, "audit verify FILE",
		`Verify the hash chain of a secrets proxy audit log: every line parses, the
sequence numbers run from 1 without a gap, and each line carries the SHA-256
of the line before it. An edited, inserted, reordered or removed line is
reported with its line number. Prints the line count and the last line's
hash: record it elsewhere to detect a truncated tail later.`, auditExamples)
	if code, ok := parse(fs, s, args[1:]); !ok {
		return code
	}
	if fs.NArg() != 1 {
		return usageError(s, fs, "want exactly one FILE")
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return failure(s, fs, err)
	}
	defer f.Close()
	res, err := audit.Verify(f)
	if err != nil {
		fmt.Fprintf(s.err, "sealrun audit verify: %s: chain broken at %v\n", fs.Arg(0), err)
		return exitError
	}
	fmt.Fprintf(s.out, "ok: %d lines, last seq %d, last hash %s\n", res.Lines, res.LastSeq, res.LastHash)
	return exitOK
}

const auditExamples = `  sealrun audit verify /var/lib/sealrun/audit.log
  ok: 18211 lines, last seq 18211, last hash 3f1c...`
