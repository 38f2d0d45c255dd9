package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// The etcdctl environment. A file's own settings win, as etcdctl's flags
// win over these variables: ETCDCTL_ENDPOINTS is used only when the file
// chooses neither endpoints nor an embedded data_dir, and the TLS variables
// only with such endpoints and no tls: section. ETCDCTL_USER and
// ETCDCTL_PASSWORD are not read: a password in the environment is inherited
// by every job the runner starts; give username and password_file instead.
const (
	envEndpoints = "ETCDCTL_ENDPOINTS"
	envCACert    = "ETCDCTL_CACERT"
	envCert      = "ETCDCTL_CERT"
	envKey       = "ETCDCTL_KEY"
)

// EtcdEnv is the cluster etcdctl's environment names.
type EtcdEnv struct {
	// Endpoints from ETCDCTL_ENDPOINTS (comma-separated), nil if unset.
	Endpoints []string
	// TLS from ETCDCTL_CACERT, ETCDCTL_CERT and ETCDCTL_KEY, nil if unset.
	TLS *TLS
}

// EtcdFromEnv reads the etcdctl variables through lookup (os.LookupEnv);
// the TLS ones only along with ETCDCTL_ENDPOINTS.
func EtcdFromEnv(lookup func(string) (string, bool)) (EtcdEnv, error) {
	var e EtcdEnv
	if v, ok := lookup(envEndpoints); ok && strings.TrimSpace(v) != "" {
		for _, ep := range strings.Split(v, ",") {
			if ep = strings.TrimSpace(ep); ep == "" {
				return EtcdEnv{}, fmt.Errorf("%s=%q has an empty endpoint; want e.g. https://etcd1:2379,https://etcd2:2379", envEndpoints, v)
			}
			e.Endpoints = append(e.Endpoints, ep)
		}
	}
	if e.Endpoints == nil {
		return e, nil // the TLS variables describe ETCDCTL_ENDPOINTS' cluster
	}
	ca, _ := lookup(envCACert)
	cert, _ := lookup(envCert)
	key, _ := lookup(envKey)
	if (cert == "") != (key == "") {
		return EtcdEnv{}, fmt.Errorf("%s and %s go together (a client certificate and its key); set both or neither", envCert, envKey)
	}
	if ca != "" || cert != "" {
		e.TLS = &TLS{CAFile: ca, CertFile: cert, KeyFile: key}
	}
	return e, nil
}

// applyEtcdEnv fills what the file left open from the etcdctl environment.
func (c *Config) applyEtcdEnv(lookup func(string) (string, bool)) error {
	e := c.State.Etcd
	if c.State.Backend != "etcd" || e == nil || len(e.Endpoints) > 0 || e.DataDir != "" {
		return nil
	}
	env, err := EtcdFromEnv(lookup)
	if err != nil {
		return err
	}
	if env.Endpoints == nil {
		return nil
	}
	e.Endpoints = env.Endpoints
	if e.TLS == nil {
		e.TLS = env.TLS
	}
	return nil
}

// lookupEnv is how Decode reads the environment.
var lookupEnv = os.LookupEnv

var errNoEtcd = errors.New("state.etcd: set endpoints for an external etcd (or " + envEndpoints + "), or data_dir for the embedded one")
