package runner

import (
	"os"
	"strings"
	"testing"
	"time"
)

const minimalConfig = `
amqp: {url: "amqp://guest:guest@127.0.0.1:5672/"}
queues: [rmq_cpu_x]
keys: {source: dir, dir: /keys}
executor: {command: [/bin/true]}
`

func TestDecodeConfig(t *testing.T) {
	c, err := DecodeConfig(strings.NewReader(minimalConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.AMQP.Exchange != DefaultExchange || c.Concurrency != 4 || c.AMQP.Prefetch != 8 || !*c.AMQP.Declare ||
		c.ShutdownGrace != 30*time.Second || c.Executor.Timeout != time.Hour {
		t.Fatalf("defaults not applied: %+v", c)
	}
	cases := map[string]string{
		"unknown field":        minimalConfig + "bogus: 1\n",
		"nested unknown":       strings.Replace(minimalConfig, "source: dir", "source: dir, nope: 1", 1),
		"no queues":            strings.Replace(minimalConfig, "[rmq_cpu_x]", "[]", 1),
		"routing prefix":       strings.Replace(minimalConfig, "[rmq_cpu_x]", "[StudioML.rmq_cpu_x]", 1),
		"bad url":              strings.Replace(minimalConfig, "amqp://", "http://", 1),
		"no key source":        strings.Replace(minimalConfig, "source: dir, ", "", 1),
		"bad template":         strings.Replace(minimalConfig, "/bin/true", "'{{.Nope'", 1),
		"storage unknown":      minimalConfig + "storage: {state: {backend: memory, x: 1}}\n",
		"empty":                "",
		"retention in window":  minimalConfig + "job_retention: 10m\n",
		"discover no patterns": minimalConfig + "discover: {management_url: 'http://127.0.0.1:15672'}\n",
		"discover bad pattern": minimalConfig + "discover: {management_url: 'http://127.0.0.1:15672', patterns: ['(']}\n",
		"discover bad url":     minimalConfig + "discover: {management_url: 'amqp://x', patterns: [a]}\n",
		"discover password":    minimalConfig + "discover: {management_url: 'http://u:p@x:1', patterns: [a]}\n",
		"discover unknown":     minimalConfig + "discover: {management_url: 'http://x:1', patterns: [a], nope: 1}\n",
		"claim lease short":    minimalConfig + "claim_lease: 1s\n",
		"claim lease negative": minimalConfig + "claim_lease: -30s\n",
		"claim lease no unit":  minimalConfig + "claim_lease: 30\n",
		"proxy header typo":    strings.Replace(minimalConfig, "source: dir, dir: /keys", "source: proxy, proxy: {api_id: r, id_headers: X}", 1),
	}
	for name, doc := range cases {
		if _, err := DecodeConfig(strings.NewReader(doc)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Discovery alone is enough to have queues.
	d, err := DecodeConfig(strings.NewReader(strings.Replace(minimalConfig, "[rmq_cpu_x]", "[]", 1) +
		"discover: {management_url: 'http://127.0.0.1:15672', patterns: ['rmq_cpu_.*']}\n"))
	if err != nil || d.Discover.Interval != 30*time.Second {
		t.Fatalf("discover-only config: %v", err)
	}
	_, err = DecodeConfig(strings.NewReader(minimalConfig + "bogus: 1\n"))
	if !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown-field error %q does not name the field", err)
	}
	_, err = DecodeConfig(strings.NewReader(strings.Replace(minimalConfig, "guest:guest", "guest:s3cr3t", 1) + "queues: []\n"))
	if err != nil && strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("error echoes the password: %v", err)
	}
}

// The claim lease is the user's knob for how long a SIGKILLed runner's jobs
// wait before another runner takes them over.
func TestDecodeConfigClaimLease(t *testing.T) {
	c, err := DecodeConfig(strings.NewReader(minimalConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.ClaimLease != DefaultClaimLease {
		t.Errorf("default claim_lease %v, want %v", c.ClaimLease, DefaultClaimLease)
	}
	c, err = DecodeConfig(strings.NewReader(minimalConfig + "claim_lease: 5s\n"))
	if err != nil || c.ClaimLease != 5*time.Second {
		t.Fatalf("claim_lease: 5s decoded as %v, %v", c, err)
	}
	_, err = DecodeConfig(strings.NewReader(minimalConfig + "claim_lease: 500ms\n"))
	if err == nil || !strings.Contains(err.Error(), "claim_lease 500ms: must be at least 3s") {
		t.Errorf("claim_lease below the minimum: error %v, want one naming the field and the minimum", err)
	}
}

func TestExampleConfig(t *testing.T) {
	// As under systemd's LoadCredential=, which the example relies on.
	t.Setenv("CREDENTIALS_DIRECTORY", "/run/credentials/sealrun-runner.service")
	f, err := os.Open("../configs/runner.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := DecodeConfig(f)
	if err != nil {
		t.Fatal(err)
	}
	if c.StorageConfig() == nil || c.StorageConfig().State.Backend != "etcd" {
		t.Fatalf("storage section not decoded: %+v", c.StorageConfig())
	}
	if c.ClaimLease != DefaultClaimLease {
		t.Errorf("example claim_lease %v, want the default %v", c.ClaimLease, DefaultClaimLease)
	}
}

func FuzzDecodeConfig(f *testing.F) {
	f.Add(minimalConfig)
	if b, err := os.ReadFile("../configs/runner.yaml"); err == nil {
		f.Add(string(b))
	}
	f.Add(minimalConfig + "dead_letter: {}\nclear_text: [rmq_]\n")
	f.Add(minimalConfig + "claim_lease: 10s\n")
	f.Add(minimalConfig + "storage: {state: {backend: memory}, secrets: {backend: overlay, overlay: {store: memory, master_key: k}}}\n")
	f.Add("amqp: [1, 2]\n")
	f.Add("queues: {a: b}\n")
	f.Add("{{{{")
	f.Fuzz(func(t *testing.T, doc string) {
		c, err := DecodeConfig(strings.NewReader(doc))
		if err != nil {
			return
		}
		// Whatever decodes must be valid and usable.
		if err := c.Validate(); err != nil {
			t.Fatalf("decoded config fails Validate: %v", err)
		}
		if c.Concurrency <= 0 || c.AMQP.Prefetch <= 0 || c.AMQP.Declare == nil || len(c.Queues) == 0 {
			t.Fatalf("defaults missing: %+v", c)
		}
	})
}
