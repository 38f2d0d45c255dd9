// Package deploy holds no code: it is where the deployment artefacts live
// (systemd/ units, kubernetes/ kustomize base and overlays) and where the
// tests that check them run (systemd-analyze verify and security; kustomize
// rendering decoded strictly into the Kubernetes API types).
package deploy
