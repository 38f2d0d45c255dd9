package testenv

import (
	"strings"
	"testing"
)

// TestRabbitMQNode starts a private node, restarts it with SIGKILL and
// stops it, so the recipe the runner tests rely on is checked on its own.
func TestRabbitMQNode(t *testing.T) {
	n := RabbitMQ(t)
	t.Cleanup(StopRabbitMQ)
	url := n.VHost(t)
	if !strings.HasPrefix(url, "amqp://") {
		t.Fatalf("VHost URL %q", url)
	}
	n.Kill9AndRestart(t)
	if out := n.Ctl(t, "list_vhosts"); !strings.Contains(out, "t-") {
		t.Fatalf("vhost lost across restart: %s", out)
	}
}
