package plugin

import (
	"strings"
	"testing"
)

func TestK8sPodName(t *testing.T) {
	for _, c := range []struct{ args, ns, name string }{
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc", "default", "web-0"},
		{"K8S_POD_NAME=solo", "", "solo"},
		{"", "", ""},
		{"garbage;;=;K8S_POD_NAMESPACE", "", ""},
		{"K8S_POD_NAMESPACE=" + strings.Repeat("x", 254), "", ""},
	} {
		ns, name := k8sPodName(c.args)
		if ns != c.ns || name != c.name {
			t.Errorf("k8sPodName(%q) = %q, %q; want %q, %q", c.args, ns, name, c.ns, c.name)
		}
	}
}
