package audit

import (
	"encoding/json"
	"strconv"
	"time"
)

// appendEntry appends e encoded exactly as json.Marshal(e) would: the
// line is written for every request, and reflection-based encoding was
// half of the audit log's CPU (TestAppendEntryMatchesJSON and
// FuzzAppendEntry hold the two byte-identical).
func appendEntry(b []byte, e *Entry) []byte {
	b = append(b, `{"time":`...)
	b = appendTime(b, e.Time)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	if e.Credential != "" {
		b = append(b, `,"cred":`...)
		b = appendString(b, e.Credential)
	}
	if e.PeerUID != nil {
		b = append(b, `,"uid":`...)
		b = strconv.AppendInt(b, int64(*e.PeerUID), 10)
	}
	if e.PeerPID != nil {
		b = append(b, `,"pid":`...)
		b = strconv.AppendInt(b, int64(*e.PeerPID), 10)
	}
	b = append(b, `,"verb":`...)
	b = appendString(b, e.Verb)
	if e.Op != "" {
		b = append(b, `,"op":`...)
		b = appendString(b, e.Op)
	}
	b = append(b, `,"path":`...)
	b = appendString(b, e.Path)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(e.Status), 10)
	b = append(b, `,"outcome":`...)
	b = appendString(b, e.Outcome)
	if e.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, e.Reason)
	}
	b = append(b, `,"prev":`...)
	b = appendString(b, e.Prev)
	return append(b, '}')
}

// appendTime is time.Time's MarshalJSON; a time it refuses (a year
// outside 0–9999) falls back to it, so the error is the same.
func appendTime(b []byte, t time.Time) []byte {
	if y := t.Year(); y < 0 || y > 9999 {
		j, _ := t.MarshalJSON()
		return append(b, j...)
	}
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// appendString quotes s as encoding/json does; anything but printable
// ASCII without ", \, <, > and & takes json.Marshal's own path (HTML
// escaping, invalid UTF-8, U+2028/U+2029).
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			j, _ := json.Marshal(s)
			return append(b, j...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
