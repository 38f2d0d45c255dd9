package client

import (
	"testing"

	"github.com/sealrun/sealrun/internal/leaktest"
)

// The API key never prints: not in a Config, not in a Client (which also
// holds cached values), under any fmt verb, slog or JSON.
func TestAPIKeyNeverPrints(t *testing.T) {
	const key = "k3y-0f-the-proxy-api-x9"
	cfg := Config{Socket: "/nonexistent/proxy.sock", ID: "runner", Key: key}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, gen, _ := c.cache.Get("a")
	if !c.cache.Fill("a", []byte("cached-value-bytes-77"), gen) {
		t.Fatal("value not cached")
	}
	for name, v := range map[string]any{"key": cfg.Key, "config": cfg, "*config": &cfg, "client": c} {
		leaktest.NoSecret(t, name, v, []byte(key), []byte("cached-value-bytes-77"))
	}
}
