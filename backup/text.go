package backup

import (
	"bufio"
	"bytes"
	"encoding/base32"
	"fmt"
	"hash/crc32"
	"io"
	"strconv"
	"strings"

	qrcode "github.com/skip2/go-qrcode"
)

// FormatName is the share text's format line value.
const FormatName = "sealrun-share/1"

// Crockford's base32: digits and capitals without I, L, O, U, so a share
// read aloud or typed is unambiguous; on input O is read as 0 and I, L as 1,
// and case does not matter.
var b32 = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

const (
	groupLen   = 5
	lineGroups = 8
	lineChars  = groupLen * lineGroups // 25 bytes a line
	checkChars = 4                     // 20 bits of CRC-32C per line
	maxLines   = 99
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// lineCheck binds a line's characters to its number, so a line typed in the
// wrong place fails too.
func lineCheck(n int, chars string) string {
	c := crc32.Checksum([]byte(fmt.Sprintf("%02d:%s", n, chars)), castagnoli) & (1<<(5*checkChars) - 1)
	var b [5]byte // 20 bits, left-aligned in 3 bytes, encode to 4 chars
	b[0], b[1], b[2] = byte(c>>12), byte(c>>4), byte(c<<4)
	return b32.EncodeToString(b[:3])[:checkChars]
}

// Lines is the typable form of the share: numbered lines of 8 groups of 5
// characters, each ending in its own check. It is also what the QR code holds.
func (s Share) Lines() string {
	enc := b32.EncodeToString(s.marshal())
	var w strings.Builder
	for n := 1; len(enc) > 0; n++ {
		chunk := enc[:min(lineChars, len(enc))]
		enc = enc[len(chunk):]
		fmt.Fprintf(&w, "%02d ", n)
		for i := 0; i < len(chunk); i += groupLen {
			fmt.Fprintf(&w, " %s", chunk[i:min(i+groupLen, len(chunk))])
		}
		width := len(chunk) + (len(chunk)+groupLen-1)/groupLen
		fmt.Fprintf(&w, "%s  %s\n", strings.Repeat(" ", lineGroups*(groupLen+1)-width), lineCheck(n, chunk))
	}
	return w.String()
}

// Text is the printable share file: a header a person can read, then the lines.
func (s Share) Text() []byte {
	var w bytes.Buffer
	fmt.Fprintf(&w, `SEALRUN KEY SHARE - keep it offline, apart from the other shares of this key
format:  %s
key id:  %s
share:   %d of %d (any %d restore the key)
set:     %s
length:  %d bytes

`, FormatName, s.KeyID, s.Index, s.Total, s.Threshold, s.Set(), s.Length)
	w.WriteString(s.Lines())
	fmt.Fprintf(&w, `
To restore, with %d shares of this set:
  sealrun backup restore --out KEYFILE share-a.txt share-b.txt ...
or type the numbered lines of each share (any order of shares) on stdin:
  sealrun backup restore --out KEYFILE -
Each line ends in a check: a mistyped line is reported by its number.
`, s.Threshold)
	return w.Bytes()
}

// QR is a PNG of the share's lines: medium error correction (15% of the
// code may be damaged), or low for the largest files, which need the room.
func (s Share) QR() ([]byte, error) {
	png, err := qrcode.Encode(s.Lines(), qrcode.Medium, 768)
	if err != nil {
		png, err = qrcode.Encode(s.Lines(), qrcode.Low, 768)
	}
	return png, err
}

// Parse reads shares from share files or typed lines: every line that starts
// with a number is a share line, a line numbered 1 starts a new share, and
// other lines (a file's header) are ignored except a format line. name is
// used in errors (a file name, or "stdin").
func Parse(r io.Reader, name string) ([]Share, error) {
	var out []Share
	var cur strings.Builder
	next, inShare, shareNo := 1, false, 0
	flush := func() error {
		if !inShare {
			return nil
		}
		raw, err := b32.DecodeString(cur.String())
		if err != nil {
			return fmt.Errorf("%s, share %d: lines do not decode (%v): a line is missing or cut short", name, shareNo, err)
		}
		s, err := unmarshal(raw, fmt.Sprintf("%s, share %d", name, shareNo))
		if err != nil {
			return err
		}
		out = append(out, s)
		cur.Reset()
		inShare, next = false, 1
		return nil
	}
	sc := bufio.NewScanner(io.LimitReader(r, 1<<20))
	lineNo := 0
	for sc.Scan() {
		lineNo++
		line := strings.TrimSpace(sc.Text())
		if f, ok := strings.CutPrefix(line, "format:"); ok {
			if f = strings.TrimSpace(f); f != FormatName {
				return nil, fmt.Errorf("%s line %d: format %q; this sealrun reads %s", name, lineNo, f, FormatName)
			}
			continue
		}
		if line == "" || line[0] < '0' || line[0] > '9' {
			continue
		}
		fields := strings.Fields(line)
		n, err := strconv.Atoi(fields[0])
		if err != nil || n < 1 || n > maxLines {
			return nil, fmt.Errorf("%s line %d: %q is not a share line number (01..%02d)", name, lineNo, fields[0], maxLines)
		}
		if len(fields) < 3 {
			return nil, fmt.Errorf("%s line %d (share line %02d): want the line number, the groups and the 4-character check", name, lineNo, n)
		}
		if n == 1 {
			if err := flush(); err != nil {
				return nil, err
			}
			shareNo++
			inShare = true
		}
		if !inShare {
			return nil, fmt.Errorf("%s line %d: share line %02d comes before a line 01", name, lineNo, n)
		}
		if n != next {
			return nil, fmt.Errorf("%s, share %d: line %02d where line %02d was expected: a line is missing or repeated", name, shareNo, n, next)
		}
		chars, err := normalize(strings.Join(fields[1:len(fields)-1], ""))
		if err != nil {
			return nil, fmt.Errorf("%s, share %d, line %02d: %v", name, shareNo, n, err)
		}
		check, err := normalize(fields[len(fields)-1])
		if err != nil || len(check) != checkChars {
			return nil, fmt.Errorf("%s, share %d, line %02d: the last group must be the %d-character line check", name, shareNo, n, checkChars)
		}
		if len(chars) > lineChars {
			return nil, fmt.Errorf("%s, share %d, line %02d: %d characters, a line holds at most %d: a character is doubled", name, shareNo, n, len(chars), lineChars)
		}
		if lineCheck(n, chars) != check {
			return nil, fmt.Errorf("%s, share %d, line %02d: the line check does not match: a character on line %02d is mistyped (or its check is); compare that line with the printed share", name, shareNo, n, n)
		}
		if cur.Len()%lineChars != 0 {
			return nil, fmt.Errorf("%s, share %d, line %02d: follows a short last line", name, shareNo, n)
		}
		cur.WriteString(chars)
		next++
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := flush(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no share lines found (lines start with their number, 01, 02, ...)", name)
	}
	return out, nil
}

// normalize upper-cases and maps the look-alikes Crockford allows.
func normalize(s string) (string, error) {
	b := []byte(strings.ToUpper(strings.ReplaceAll(s, "-", "")))
	for i, c := range b {
		switch c {
		case 'O':
			b[i] = '0'
		case 'I', 'L':
			b[i] = '1'
		}
		if !strings.ContainsRune("0123456789ABCDEFGHJKMNPQRSTVWXYZ", rune(b[i])) {
			return "", fmt.Errorf("character %d (%q) is not in the share alphabet (0-9, A-Z without I L O U)", i+1, rune(c))
		}
	}
	return string(b), nil
}
