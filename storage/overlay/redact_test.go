package overlay_test

import (
	"bytes"
	"testing"

	"github.com/sealrun/sealrun/internal/leaktest"
	"github.com/sealrun/sealrun/storage/memory"
	"github.com/sealrun/sealrun/storage/overlay"
)

// A master key, a ring of them and the overlay holding the ring print
// their ids only, under every fmt verb, slog and JSON.
func TestKeysNeverPrint(t *testing.T) {
	rawA, rawB := bytes.Repeat([]byte("A7x"), 22)[:overlay.KeySize], bytes.Repeat([]byte("q9Z"), 22)[:overlay.KeySize]
	a, err := overlay.NewKey("a", rawA)
	if err != nil {
		t.Fatal(err)
	}
	b, err := overlay.NewKey("", rawB) // legacy: its id is the thumbprint
	if err != nil {
		t.Fatal(err)
	}
	ring, err := overlay.NewKeyRing(a, b)
	if err != nil {
		t.Fatal(err)
	}
	d := overlay.New(memory.New(), ring, overlay.Pinning)
	defer d.Close()
	for name, v := range map[string]any{"key": a, "*key": &a, "legacy key": b, "ring": ring, "ring value": *ring, "driver": d} {
		leaktest.NoSecret(t, name, v, rawA, rawB)
	}
	if out := leaktest.Render(ring); !bytes.Contains([]byte(out), []byte(`"a"`)) {
		t.Errorf("ring does not name its keys:\n%s", out)
	}
}
