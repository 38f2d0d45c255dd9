// Package logfmt is the JSON log format every sealrun process writes: one
// object per line, each key once (the innermost value wins, so a handler's
// context never repeats on a line), durations as Go duration strings
// ("1.5s") rather than nanosecond integers.
package logfmt

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"time"
)

// New is a JSON logger on w at level.
func New(w io.Writer, level slog.Leveler) *slog.Logger {
	return slog.New(Wrap(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})))
}

// Wrap decorates h with the format's rules (each key once, durations as
// strings).
func Wrap(h slog.Handler) slog.Handler { return &handler{inner: h} }

type handler struct {
	inner slog.Handler
	attrs []slog.Attr // held back from inner so Handle can drop duplicates
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool { return h.inner.Enabled(ctx, l) }

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler {
	return &handler{inner: h.inner, attrs: append(slices.Clip(h.attrs), as...)}
}

// WithGroup hands the held attributes to inner first: they belong outside
// the group.
func (h *handler) WithGroup(name string) slog.Handler {
	return &handler{inner: h.inner.WithAttrs(fixAll(h.attrs)).WithGroup(name)}
}

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	all := make([]slog.Attr, 0, len(h.attrs)+r.NumAttrs())
	all = append(all, h.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		all = append(all, a)
		return true
	})
	// Last one wins, at its first position.
	seen := make(map[string]int, len(all))
	out := all[:0:0]
	for _, a := range all {
		if i, ok := seen[a.Key]; ok {
			out[i] = a
			continue
		}
		seen[a.Key] = len(out)
		out = append(out, a)
	}
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	nr.AddAttrs(fixAll(out)...)
	return h.inner.Handle(ctx, nr)
}

func fixAll(as []slog.Attr) []slog.Attr {
	out := make([]slog.Attr, len(as))
	for i, a := range as {
		out[i] = fix(a)
	}
	return out
}

// fix writes durations as strings, in groups too.
func fix(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindDuration:
		return slog.String(a.Key, v.Duration().String())
	case slog.KindGroup:
		return slog.Attr{Key: a.Key, Value: slog.GroupValue(fixAll(v.Group())...)}
	case slog.KindAny:
		if d, ok := v.Any().(time.Duration); ok {
			return slog.String(a.Key, d.String())
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
