package vaultauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/hashicorp/vault/api"

	"github.com/sealrun/sealrun/internal/testenv"
)

// serviceAccountJWT is a projected service-account token as the kubelet
// mounts it, signed with key.
func serviceAccountJWT(t *testing.T, key *ecdsa.PrivateKey, ns, sa, uid string) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	claims := map[string]any{
		"iss": "https://kubernetes.default.svc.cluster.local",
		"sub": "system:serviceaccount:" + ns + ":" + sa,
		"aud": []string{"vault"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      ns,
			"serviceaccount": map[string]any{"name": sa, "uid": uid},
			"pod":            map[string]any{"name": "sealrun-proxy-0", "uid": "8d6c5a4e-pod"},
		},
	}
	tok, err := jwt.Signed(sig).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// fakeTokenReview is the one Kubernetes API endpoint Vault's kubernetes
// auth calls: TokenReview. Vault 1.19 (vault-plugin-auth-kubernetes v0.21.0,
// path_login.go) always calls it after checking the signature against
// pem_keys, so without a real API server this stands in for it. It verifies
// the JWT with the same public key, as the API server would.
func fakeTokenReview(t *testing.T, pub *ecdsa.PublicKey, reviews *atomic.Int64) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
			http.NotFound(w, r)
			return
		}
		reviews.Add(1)
		var req struct {
			Spec struct {
				Token     string   `json:"token"`
				Audiences []string `json:"audiences"`
			} `json:"spec"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		status := map[string]any{"authenticated": false}
		if tok, err := jwt.ParseSigned(req.Spec.Token, []jose.SignatureAlgorithm{jose.ES256}); err == nil {
			var c struct {
				Sub string `json:"sub"`
				K8s struct {
					SA struct {
						UID string `json:"uid"`
					} `json:"serviceaccount"`
				} `json:"kubernetes.io"`
			}
			if tok.Claims(pub, &c) == nil {
				status = map[string]any{"authenticated": true, "audiences": req.Spec.Audiences,
					"user": map[string]any{"username": c.Sub, "uid": c.K8s.SA.UID}}
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestKubernetes(t *testing.T) {
	addr, token := testenv.Vault(t)
	root := rootClient(t, addr, token)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	pubPEM := string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	var reviews atomic.Int64
	kube := fakeTokenReview(t, &key.PublicKey, &reviews)

	mount := uniq("kubernetes")
	if err := root.Sys().EnableAuthWithOptionsWithContext(t.Context(), mount, &api.EnableAuthOptions{Type: "kubernetes"}); err != nil {
		t.Fatal(err)
	}
	write(t, root, "auth/"+mount+"/config", map[string]any{
		"kubernetes_host":      kube.URL,
		"pem_keys":             []string{pubPEM}, // signature checked by Vault itself
		"disable_local_ca_jwt": true,             // Vault runs outside the cluster
	})
	pol := kvPolicy(t, root, "kube")
	write(t, root, "auth/"+mount+"/role/sealrun-proxy", map[string]any{
		"bound_service_account_names":      "sealrun-proxy",
		"bound_service_account_namespaces": "sealrun",
		"audience":                         "vault",
		"token_policies":                   pol,
		"token_ttl":                        "1m",
	})
	jwtPath := writeFile(t, "token", serviceAccountJWT(t, key, "sealrun", "sealrun-proxy", "3c1e0b6a-sa"))
	cfg := Config{Address: addr, Auth: Auth{Method: "kubernetes", Kubernetes: &Kubernetes{Mount: mount, Role: "sealrun-proxy", TokenPath: jwtPath}}}
	c, s, err := Connect(t.Context(), cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := canWrite(t.Context(), c, "kube"); err != nil {
		t.Fatal(err)
	}
	if reviews.Load() == 0 {
		t.Fatal("Vault did not call TokenReview")
	}

	// Vault checks the signature itself (pem_keys): a token signed by
	// another key is refused before any TokenReview.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged := writeFile(t, "forged", serviceAccountJWT(t, other, "sealrun", "sealrun-proxy", "3c1e0b6a-sa"))
	before := reviews.Load()
	bad := cfg
	bad.Auth.Kubernetes = &Kubernetes{Mount: mount, Role: "sealrun-proxy", TokenPath: forged}
	_, _, err = Connect(t.Context(), bad, Options{})
	if err == nil || reviews.Load() != before {
		t.Fatalf("forged JWT: err %v, reviews %d→%d; want refusal by Vault without a TokenReview", err, before, reviews.Load())
	}
	if strings.Contains(err.Error(), "eyJ") {
		t.Fatal("error quotes the JWT")
	}
	t.Logf("forged JWT: %v", err)

	// Another service account is not bound to the role.
	wrongSA := writeFile(t, "wrong", serviceAccountJWT(t, key, "sealrun", "someone-else", "uid-2"))
	bad.Auth.Kubernetes = &Kubernetes{Mount: mount, Role: "sealrun-proxy", TokenPath: wrongSA}
	if _, _, err := Connect(t.Context(), bad, Options{}); err == nil {
		t.Fatal("unbound service account logged in")
	}
}
