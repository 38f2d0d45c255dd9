package secrets_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/sealrun/sealrun/secrets"
)

const secret = "ssh-private-KEY-material"

func models() []secrets.Model {
	s := secrets.Secret(secret)
	return []secrets.Model{
		&secrets.MessagePrivateKey{KeyID: "k1", PEM: s},
		&secrets.MessagePassphrase{KeyID: "k1", Passphrase: s},
		&secrets.APICredential{ID: "api1", KeyHash: s, Prefixes: []string{"/secrets/"}},
		&secrets.HostCreds{Address: "h1:22", SSHKey: s, RemoteUser: "run"},
		&secrets.Raw{Name: "x", Value: s},
	}
}

// TestRedaction: no human-facing form of a model or secret shows the bytes.
func TestRedaction(t *testing.T) {
	s := secrets.Secret(secret)
	for _, m := range models() {
		var text, js bytes.Buffer
		slog.New(slog.NewTextHandler(&text, nil)).Info("msg", "model", m, "secret", s)
		slog.New(slog.NewJSONHandler(&js, nil)).Info("msg", "model", m, "secret", s)
		err := fmt.Errorf("store %v: %w", m, errors.New("boom"))
		outs := map[string]string{
			"%v": fmt.Sprintf("%v", m), "%+v": fmt.Sprintf("%+v", m), "%#v": fmt.Sprintf("%#v", m),
			"%s": fmt.Sprintf("%s", m), "%x": fmt.Sprintf("%x", m), "%q": fmt.Sprintf("%q", m),
			"deref %+v": fmt.Sprintf("%+v", deref(m)), "deref %#v": fmt.Sprintf("%#v", deref(m)),
			"secret %x": fmt.Sprintf("%x", s), "secret %#v": fmt.Sprintf("%#v", s), "secret %s": fmt.Sprint(s),
			"slog text": text.String(), "slog json": js.String(), "error": err.Error(),
		}
		for form, out := range outs {
			if strings.Contains(out, secret) || strings.Contains(out, fmt.Sprintf("%x", secret)) {
				t.Errorf("%T %s leaks the secret", m, form)
			}
		}
		if !strings.Contains(outs["%+v"], secrets.Redacted) {
			t.Errorf("%T %%+v = %s, want %s in place of the secret", m, outs["%+v"], secrets.Redacted)
		}
	}
	if b, _ := s.MarshalText(); string(b) != secrets.Redacted {
		t.Errorf("MarshalText = %q", b)
	}
}

func deref(m secrets.Model) any {
	switch v := m.(type) {
	case *secrets.HostCreds:
		return *v
	case *secrets.Raw:
		return *v
	}
	return m
}

// TestStorageCodec: the JSON storage encoding keeps the bytes.
func TestStorageCodec(t *testing.T) {
	in := &secrets.HostCreds{Address: "h1", SSHKey: secrets.Secret{0, 1, 0xff}, RemoteUser: "u"}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out secrets.HostCreds
	if err := json.Unmarshal(b, &out); err != nil || !out.SSHKey.Equal(in.SSHKey) || out.RemoteUser != "u" {
		t.Fatalf("round trip: %v", err)
	}
	if err := json.Unmarshal([]byte(`{"ssh_private_key":"not base64!"}`), &out); err == nil || strings.Contains(err.Error(), "not base64") {
		t.Fatalf("bad secret: %v (must fail without quoting input)", err)
	}
}

func TestRegistry(t *testing.T) {
	r := secrets.Default()
	for _, m := range models() {
		if !secrets.IsSecret(m) || r.Check(m) != nil {
			t.Errorf("%T: secret=%v check=%v", m, secrets.IsSecret(m), r.Check(m))
		}
	}
	for _, m := range []secrets.Model{&secrets.RunnerRecord{ID: "r"}, &secrets.JobRecord{MessageID: "m"}} {
		if secrets.IsSecret(m) || r.Check(m) != nil {
			t.Errorf("%T: secret=%v check=%v", m, secrets.IsSecret(m), r.Check(m))
		}
	}
	if secret, err := r.IsSecretKind(secrets.KindSigningKey); !secret || err != nil {
		t.Errorf("signing-key must be secret-routed: %v %v", secret, err)
	}
	if _, err := r.New("nope", "k"); !errors.Is(err, secrets.ErrUnregistered) {
		t.Errorf("unknown kind: %v", err)
	}
	if err := r.Check(&impostor{}); !errors.Is(err, secrets.ErrUnregistered) {
		t.Errorf("plain type claiming a secret kind: %v", err)
	}
	if err := secrets.NewRegistry().Check(&secrets.HostCreds{}); !errors.Is(err, secrets.ErrUnregistered) {
		t.Errorf("empty registry: %v", err)
	}
}

// impostor is a plain model that claims the host-creds kind.
type impostor struct{ Address string }

func (*impostor) Kind() string  { return secrets.KindHostCreds }
func (i *impostor) Key() string { return i.Address }
