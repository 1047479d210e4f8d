package plugin

import "strings"

// k8sPodName reads the pod's Kubernetes namespace and name from CNI_ARGS
// (K8S_POD_NAMESPACE and K8S_POD_NAME, which kubelet's CRI runtimes pass,
// "KEY=VALUE" pairs separated by ";"). They only label the attachment for
// `cni-userstack link` and the metrics, so a runtime that passes other
// keys, none, or malformed pairs gets empty names, never an error; a
// value longer than a Kubernetes name (253 bytes) is left out.
func k8sPodName(cniArgs string) (namespace, name string) {
	for _, kv := range strings.Split(cniArgs, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if len(v) > 253 {
			continue
		}
		switch strings.TrimSpace(k) {
		case "K8S_POD_NAMESPACE":
			namespace = v
		case "K8S_POD_NAME":
			name = v
		}
	}
	return namespace, name
}
