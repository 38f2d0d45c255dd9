package config_test

import (
	"context"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/sealrun/sealrun/internal/testenv"
	"github.com/sealrun/sealrun/secrets"
	"github.com/sealrun/sealrun/storage/config"
	"github.com/sealrun/sealrun/storage/driver"
)

const clusterYAML = `
secrets:
  backend: overlay
  overlay: {store: etcd, master_key: KEY, autogen: true}
state:
  backend: etcd
  etcd: {prefix: /env-test/state/, ETCD}
`

func decodeCluster(t *testing.T, etcdFields string) (*config.Config, error) {
	t.Helper()
	y := strings.NewReplacer("KEY", filepath.Join(t.TempDir(), "master.key"), "ETCD", etcdFields).Replace(clusterYAML)
	return config.Decode(strings.NewReader(y))
}

// The file wins over the etcdctl environment, as etcdctl's flags win over
// its variables; the environment fills only a cluster the file leaves open.
func TestEtcdctlEnvPrecedence(t *testing.T) {
	t.Setenv("ETCDCTL_ENDPOINTS", "https://e1:2379, https://e2:2379,https://e3:2379")
	t.Setenv("ETCDCTL_CACERT", "/env/ca.pem")
	t.Setenv("ETCDCTL_CERT", "/env/cert.pem")
	t.Setenv("ETCDCTL_KEY", "/env/key.pem")
	for _, tc := range []struct {
		name, fields string
		endpoints    []string
		tls          *config.TLS
	}{
		{"file leaves the cluster open", "dial_timeout: 5s",
			[]string{"https://e1:2379", "https://e2:2379", "https://e3:2379"},
			&config.TLS{CAFile: "/env/ca.pem", CertFile: "/env/cert.pem", KeyFile: "/env/key.pem"}},
		{"file endpoints win", "endpoints: [http://f1:2379, http://f2:2379]",
			[]string{"http://f1:2379", "http://f2:2379"}, nil},
		{"file data_dir (embedded) wins", "data_dir: /var/lib/x", nil, nil},
		{"file tls wins", "tls: {ca_file: /file/ca.pem}",
			[]string{"https://e1:2379", "https://e2:2379", "https://e3:2379"}, &config.TLS{CAFile: "/file/ca.pem"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := decodeCluster(t, tc.fields)
			if err != nil {
				t.Fatal(err)
			}
			e := c.State.Etcd
			if !reflect.DeepEqual(e.Endpoints, tc.endpoints) || !reflect.DeepEqual(e.TLS, tc.tls) {
				t.Fatalf("endpoints %q tls %+v, want %q %+v", e.Endpoints, e.TLS, tc.endpoints, tc.tls)
			}
		})
	}
}

// Bad etcdctl variables are refused with what to fix.
func TestEtcdctlEnvErrors(t *testing.T) {
	for _, tc := range []struct{ endpoints, cert, key, want string }{
		{"http://a:2379,,http://b:2379", "", "", "empty endpoint"},
		{"http://a:2379", "/c.pem", "", "ETCDCTL_CERT and ETCDCTL_KEY go together"},
		{"http://a:2379", "", "/k.pem", "ETCDCTL_CERT and ETCDCTL_KEY go together"},
	} {
		t.Setenv("ETCDCTL_ENDPOINTS", tc.endpoints)
		t.Setenv("ETCDCTL_CERT", tc.cert)
		t.Setenv("ETCDCTL_KEY", tc.key)
		_, err := decodeCluster(t, "dial_timeout: 5s")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ETCDCTL_ENDPOINTS=%q CERT=%q KEY=%q: %v, want %q", tc.endpoints, tc.cert, tc.key, err, tc.want)
		} else {
			t.Logf("user sees: %v", err)
		}
	}
	// Neither the file nor the environment names a cluster.
	t.Setenv("ETCDCTL_ENDPOINTS", "")
	t.Setenv("ETCDCTL_CERT", "/c.pem") // alone, without endpoints: not read
	_, err := decodeCluster(t, "dial_timeout: 5s")
	if err == nil || !strings.Contains(err.Error(), "ETCDCTL_ENDPOINTS") || !strings.Contains(err.Error(), "data_dir") {
		t.Fatalf("no cluster: %v", err)
	}
}

// A service opened on a real 3-member cluster named only by
// ETCDCTL_ENDPOINTS (as proxy, runner and migrate open theirs) keeps
// working with the first listed member dead.
func TestOpenOnClusterFromEnv(t *testing.T) {
	c := testenv.SharedEtcdCluster(t)
	t.Setenv("ETCDCTL_ENDPOINTS", strings.Join(c.Endpoints, ","))
	cfg, err := decodeCluster(t, "timeout: 15s")
	if err != nil {
		t.Fatal(err)
	}
	svc, err := config.Open(t.Context(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	put := func(v string) {
		t.Helper()
		if _, err := svc.Put(ctx, &secrets.Raw{Name: "env/k", Value: secrets.Secret(v)}, driver.PutOptions{}); err != nil {
			t.Fatal(err)
		}
		got := &secrets.Raw{Name: "env/k"}
		if _, err := svc.Get(ctx, got); err != nil || string(got.Value.Reveal()) != v {
			t.Fatalf("Get: %v", err)
		}
	}
	put("one")
	c.Kill(0)
	put("two")
}
