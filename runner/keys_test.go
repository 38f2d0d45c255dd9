package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sealrun/sealrun/envelope"
)

func TestDirKeySource(t *testing.T) {
	dir := t.TempDir()
	writeKeyDir(t, dir, fixPrefix)
	// Kubernetes mounts add ..data links; they must not become prefixes.
	writeFile(t, filepath.Join(dir, "queues/signing/..data/x"), []byte("junk"))
	src := &DirKeySource{Dir: dir, Poll: 20 * time.Millisecond}
	k, err := src.Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(k.MessageKeys) != 1 || len(k.HPKEKeys) != 1 || k.SigningKeys.Len() != 1 || k.ResponseKeys.Len() != 1 {
		t.Fatalf("loaded %d rsa, %d hpke, %d signing, %d response keys", len(k.MessageKeys), len(k.HPKEKeys),
			k.SigningKeys.Len(), k.ResponseKeys.Len())
	}
	changes := src.Changes(t.Context())
	writeFile(t, filepath.Join(dir, "queues/signing/rmq_more_"), []byte(fixSign.Public().AuthorizedKey()))
	select {
	case <-changes:
	case <-time.After(5 * time.Second):
		t.Fatal("no change signalled for a new signing key")
	}

	// Wrong passphrase: a clear error that does not contain the passphrase.
	writeFile(t, filepath.Join(dir, "message/passphrase/ssh-passphrase"), []byte("wrong horse battery"))
	_, err = src.Load(t.Context())
	if err == nil || strings.Contains(err.Error(), "wrong horse") || strings.Contains(err.Error(), string(fixPass)) {
		t.Fatalf("wrong passphrase: %v", err)
	}
	os.RemoveAll(filepath.Join(dir, "queues/signing"))
	os.MkdirAll(filepath.Join(dir, "queues/signing"), 0o700)
	writeFile(t, filepath.Join(dir, "message/passphrase/ssh-passphrase"), fixPass)
	if _, err := src.Load(t.Context()); err == nil || !strings.Contains(err.Error(), "no signing keys") {
		t.Fatalf("no signing keys: %v", err)
	}
	if _, err := (&DirKeySource{Dir: filepath.Join(dir, "absent")}).Load(t.Context()); err == nil {
		t.Fatal("missing directory accepted")
	}
}

// TestInstallKeepsPreviousKeys: after a rotation the replaced private key
// still opens messages sealed before it.
func TestInstallKeepsPreviousKeys(t *testing.T) {
	fixtures(t)
	sk, _ := envelope.NewPrefixMap(map[string]envelope.SigningPublicKey{fixPrefix: fixSign.Public()})
	r := &Runner{cfg: &Config{}}
	r.install(&Keys{MessageKeys: []*envelope.MessagePrivateKey{fixRSA}, SigningKeys: sk})
	old := sealStudio(t, fixSign)
	r.install(&Keys{MessageKeys: []*envelope.MessagePrivateKey{fixResp}, SigningKeys: sk})
	op := r.opener.Load()
	if len(op.MessageKeys) != 2 || !op.MessageKeys[0].Equal(fixResp) {
		t.Fatalf("keys after rotation: %d, current first: %v", len(op.MessageKeys), op.MessageKeys[0].Equal(fixResp))
	}
	if _, err := op.Open(t.Context(), fixPrefix+"x", old); err != nil {
		t.Fatalf("message sealed before the rotation: %v", err)
	}
}
