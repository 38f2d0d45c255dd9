package embedded

import (
	"context"
	"strings"
	"testing"
	"time"
)

// A second server on a data_dir in use fails at once with what to do,
// instead of blocking on etcd's own database lock.
func TestDataDirInUseFailsFast(t *testing.T) {
	dir := t.TempDir()
	srv, err := Start(context.Background(), Config{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	start := time.Now()
	_, err = Start(context.Background(), Config{DataDir: dir})
	if err == nil || !strings.Contains(err.Error(), "in use by another sealrun") {
		t.Fatalf("second Start: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v to refuse", d)
	}
	srv.Close()
	// Released on close: the directory can be used again.
	srv2, err := Start(context.Background(), Config{DataDir: dir})
	if err != nil {
		t.Fatalf("after close: %v", err)
	}
	srv2.Close()
}
