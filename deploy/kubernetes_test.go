package deploy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	k8sjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/sealrun/sealrun/cmd/sealrun/configcheck"
)

// kinds maps every kind the manifests may hold to its API type. A kind not
// listed fails the test: new objects get a type and their own checks.
var kinds = map[string]func() any{
	"v1/Namespace":                             func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount":                        func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":                             func() any { return &corev1.ConfigMap{} },
	"apps/v1/Deployment":                       func() any { return &appsv1.Deployment{} },
	"batch/v1/Job":                             func() any { return &batchv1.Job{} },
	"networking.k8s.io/v1/NetworkPolicy":       func() any { return &networkingv1.NetworkPolicy{} },
	"policy/v1/PodDisruptionBudget":            func() any { return &policyv1.PodDisruptionBudget{} },
	"rbac.authorization.k8s.io/v1/Role":        func() any { return &rbacv1.Role{} },
	"rbac.authorization.k8s.io/v1/RoleBinding": func() any { return &rbacv1.RoleBinding{} },
}

// render builds a kustomization from disk, as kubectl apply -k would, and
// decodes every object strictly (an unknown or misplaced field fails).
func render(t *testing.T, dir string) []any {
	t.Helper()
	objs, errs := decodeAll(dir)
	for _, err := range errs {
		t.Error(err)
	}
	return objs
}

func decodeAll(dir string) ([]any, []error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, []error{fmt.Errorf("kustomize build %s: %w", dir, err)}
	}
	var objs []any
	var errs []error
	for _, r := range rm.Resources() {
		gvk := r.GetGvk()
		key := gvk.Version + "/" + gvk.Kind
		if gvk.Group != "" {
			key = gvk.Group + "/" + key
		}
		newObj, ok := kinds[key]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: %s %s: kind not expected in the manifests", dir, key, r.GetName()))
			continue
		}
		raw, err := r.MarshalJSON()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s: %w", dir, r.GetName(), err))
			continue
		}
		// sigs.k8s.io/json, as the API server decodes: field names match
		// case-sensitively (encoding/json would accept
		// readOnlyRootFileSystem), unknown and duplicate fields are errors.
		obj := newObj()
		strict, err := k8sjson.UnmarshalStrict(raw, obj, k8sjson.DisallowUnknownFields, k8sjson.DisallowDuplicateFields)
		if err == nil && len(strict) > 0 {
			err = errors.Join(strict...)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s %s does not decode strictly: %w", dir, key, r.GetName(), err))
			continue
		}
		objs = append(objs, obj)
	}
	return objs, errs
}

// TestStrictDecodeCatchesTypos: a misspelt field, which the API server
// would silently drop (here: the read-only root filesystem), fails.
func TestStrictDecodeCatchesTypos(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"kustomization.yaml": "resources: [deploy.yaml]\n",
		"deploy.yaml": `apiVersion: apps/v1
kind: Deployment
metadata: {name: x}
spec:
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec:
      containers:
        - name: c
          image: i
          securityContext: {readOnlyRootFileSystem: true}
`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, errs := decodeAll(dir)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "readOnlyRootFileSystem") {
		t.Fatalf("errors %v, want one naming readOnlyRootFileSystem", errs)
	}
}

func TestKustomizeRenders(t *testing.T) {
	for _, dir := range []string{"kubernetes/base", "kubernetes/overlay-etcd", "kubernetes/vault", "kubernetes/migrate-etcd"} {
		t.Run(strings.TrimPrefix(dir, "kubernetes/"), func(t *testing.T) {
			objs := render(t, dir)
			overlay := dir != "kubernetes/base"
			var sawDeploy, sawPDB, sawNetpol, sawNS bool
			for _, o := range objs {
				switch o := o.(type) {
				case *appsv1.Deployment:
					sawDeploy = true
					checkDeployment(t, o)
					checkPod(t, "Deployment "+o.Name, &o.Spec.Template.Spec, overlay)
				case *batchv1.Job:
					checkPod(t, "Job "+o.Name, &o.Spec.Template.Spec, overlay)
				case *policyv1.PodDisruptionBudget:
					sawPDB = true
				case *networkingv1.NetworkPolicy:
					sawNetpol = true
					checkNetworkPolicy(t, o)
				case *rbacv1.Role:
					checkRole(t, o)
				case *corev1.Namespace:
					sawNS = true
					if o.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
						t.Errorf("namespace %s does not enforce restricted Pod Security", o.Name)
					}
				case *corev1.ConfigMap:
					checkConfigMap(t, o)
				}
				if m, ok := o.(interface{ GetNamespace() string }); ok && m.GetNamespace() != "sealrun" {
					if _, isNS := o.(*corev1.Namespace); !isNS {
						t.Errorf("%T in namespace %q, want sealrun", o, m.GetNamespace())
					}
				}
			}
			if !sawDeploy || !sawPDB || !sawNetpol || !sawNS {
				t.Errorf("missing objects: deployment %v, pdb %v, networkpolicy %v, namespace %v", sawDeploy, sawPDB, sawNetpol, sawNS)
			}
		})
	}
}

// keyVolumes are the volumes that carry what only the proxy may hold: the
// master key Secret and the Vault service-account token.
func keyVolumes(p *corev1.PodSpec) map[string]bool {
	out := map[string]bool{}
	for _, v := range p.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "sealrun-master-key" {
			out[v.Name] = true
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil {
					out[v.Name] = true
				}
			}
		}
	}
	return out
}

// runnerSecrets are the only Secrets the runner container may mount.
var runnerSecrets = map[string]bool{"sealrun-runner-apikey": true, "sealrun-amqp": true, "sealrun-etcd-client": true}

func checkPod(t *testing.T, name string, p *corev1.PodSpec, overlay bool) {
	t.Helper()
	if p.AutomountServiceAccountToken == nil || *p.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken must be false (nothing calls the Kubernetes API)", name)
	}
	if p.HostNetwork || p.HostPID || p.HostIPC {
		t.Errorf("%s: uses host namespaces", name)
	}
	psc := p.SecurityContext
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod seccomp profile must be RuntimeDefault", name)
	}
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("%s: pod must run as a non-root uid", name)
	}
	for _, v := range p.Volumes {
		if v.HostPath != nil {
			t.Errorf("%s: hostPath volume %s", name, v.Name)
		}
		if v.Secret != nil && v.Secret.DefaultMode != nil && *v.Secret.DefaultMode&0o007 != 0 {
			t.Errorf("%s: secret volume %s is world-readable (mode %#o)", name, v.Name, *v.Secret.DefaultMode)
		}
		if v.Secret != nil && v.Secret.DefaultMode != nil && *v.Secret.DefaultMode != 0o400 && *v.Secret.DefaultMode != 0o440 {
			t.Errorf("%s: secret volume %s mode %#o (decimal %d): write 0400 or 0440", name, v.Name, *v.Secret.DefaultMode, *v.Secret.DefaultMode)
		}
	}
	keys := keyVolumes(p)
	secrets := map[string]string{} // volume -> Secret name
	for _, v := range p.Volumes {
		if v.Secret != nil {
			secrets[v.Name] = v.Secret.SecretName
		}
	}
	if len(p.InitContainers) > 0 || len(p.EphemeralContainers) > 0 {
		t.Errorf("%s: init or ephemeral containers are not expected", name)
	}
	for _, c := range p.Containers {
		cn := name + " container " + c.Name
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("%s: no securityContext", cn)
			continue
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s: allowPrivilegeEscalation must be false", cn)
		case sc.Privileged != nil && *sc.Privileged:
			t.Errorf("%s: privileged", cn)
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s: readOnlyRootFilesystem must be true", cn)
		case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
			t.Errorf("%s: runAsNonRoot must be true", cn)
		case sc.RunAsUser != nil && *sc.RunAsUser == 0:
			t.Errorf("%s: runs as root", cn)
		case sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0:
			t.Errorf("%s: must drop ALL capabilities and add none", cn)
		case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
			t.Errorf("%s: seccomp profile must be RuntimeDefault", cn)
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := c.Resources.Requests[r]; !ok {
				t.Errorf("%s: no %s request", cn, r)
			}
			if _, ok := c.Resources.Limits[r]; !ok {
				t.Errorf("%s: no %s limit", cn, r)
			}
		}
		if overlay && !strings.Contains(c.Image, ":") {
			t.Errorf("%s: image %q has no tag after the overlay's images: transformer", cn, c.Image)
		}
		if len(c.Env) > 0 || len(c.EnvFrom) > 0 {
			t.Errorf("%s: environment variables set; secrets and config come from files", cn)
		}
		for _, m := range c.VolumeMounts {
			if c.Name == "runner" && secrets[m.Name] != "" && !runnerSecrets[secrets[m.Name]] {
				t.Errorf("%s mounts Secret %s: the runner gets only its API key (and broker URL, etcd client cert)", cn, secrets[m.Name])
			}
			if keys[m.Name] && c.Name != "secrets-proxy" && c.Name != "migrate" {
				t.Errorf("%s mounts %s: only the secrets proxy holds the master key or the Vault login", cn, m.Name)
			}
		}
	}
}

func checkDeployment(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	p := &d.Spec.Template.Spec
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("deployment %s: want several replicas", d.Name)
	}
	if len(p.TopologySpreadConstraints) == 0 {
		t.Errorf("deployment %s: no topology spread", d.Name)
	}
	names := map[string]*corev1.Container{}
	for i := range p.Containers {
		c := &p.Containers[i]
		names[c.Name] = c
		for probe, want := range map[*corev1.Probe]string{c.LivenessProbe: "/healthz", c.ReadinessProbe: "/readyz"} {
			if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != want {
				t.Errorf("deployment %s container %s: want an HTTP probe on %s", d.Name, c.Name, want)
			}
		}
	}
	proxy, runner := names["secrets-proxy"], names["runner"]
	if proxy == nil || runner == nil || len(names) != 2 {
		t.Fatalf("deployment %s: want containers secrets-proxy and runner, have %v", d.Name, slices.Collect(mapsKeys(names)))
	}
	// The socket is shared through memory, not disk, and by these two only.
	var socketVol string
	for _, v := range p.Volumes {
		if v.EmptyDir != nil && v.EmptyDir.Medium == corev1.StorageMediumMemory && v.Name == "socket" {
			socketVol = v.Name
		}
	}
	for _, c := range []*corev1.Container{proxy, runner} {
		if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == socketVol && m.MountPath == "/run/sealrun" }) {
			t.Errorf("deployment %s container %s: does not mount the in-memory socket volume at /run/sealrun", d.Name, c.Name)
		}
	}
}

func mapsKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func checkNetworkPolicy(t *testing.T, n *networkingv1.NetworkPolicy) {
	t.Helper()
	if !slices.Contains(n.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) || !slices.Contains(n.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
		t.Errorf("networkpolicy %s: must restrict both ingress and egress", n.Name)
	}
	// DNS, RabbitMQ (AMQP, AMQPS), etcd, Vault: nothing else.
	allowed := map[int32]bool{53: true, 5671: true, 5672: true, 2379: true, 8200: true}
	for _, e := range n.Spec.Egress {
		if len(e.To) == 0 || len(e.Ports) == 0 {
			t.Errorf("networkpolicy %s: an egress rule without destinations or ports allows everything", n.Name)
		}
		for _, p := range e.Ports {
			if p.Port == nil || !allowed[p.Port.IntVal] {
				t.Errorf("networkpolicy %s: egress to port %v is not DNS, RabbitMQ, etcd or Vault", n.Name, p.Port)
			}
		}
	}
}

func checkRole(t *testing.T, r *rbacv1.Role) {
	t.Helper()
	for _, rule := range r.Rules {
		for _, s := range append(append([]string{}, rule.Verbs...), rule.Resources...) {
			if s == "*" {
				t.Errorf("role %s: wildcard in %v", r.Name, rule)
			}
		}
		for _, v := range rule.Verbs {
			if !slices.Contains([]string{"get", "list", "watch"}, v) {
				t.Errorf("role %s: verb %s: sealrun only ever reads", r.Name, v)
			}
		}
	}
}

// checkConfigMap loads each sealrun configuration with the component's own
// loader and requires every option to be written out.
func checkConfigMap(t *testing.T, cm *corev1.ConfigMap) {
	t.Helper()
	for file, data := range cm.Data {
		kind, err := configcheck.DetectKind([]byte(data))
		if err != nil {
			t.Errorf("configmap %s %s: %v", cm.Name, file, err)
			continue
		}
		if err := configcheck.Check(kind, fmt.Sprintf("configmap %s %s", cm.Name, file), []byte(data), true); err != nil {
			t.Error(err)
		}
	}
}
