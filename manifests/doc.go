// Package manifests holds the Kubernetes manifests of cni-userstack
// (cni-userstack.yaml: `kubectl apply -f manifests/`) and the test that
// checks them; it has no Go code of its own. docs/kubernetes.md explains
// them.
package manifests
