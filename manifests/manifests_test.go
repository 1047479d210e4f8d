package manifests

import (
	"bytes"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"
)

// objects decodes every document of cni-userstack.yaml strictly (an
// unknown or misspelt field fails) into its typed object.
func objects(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile("cni-userstack.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	for i, doc := range bytes.Split(b, []byte("\n---\n")) {
		var head struct{ Kind string }
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		var obj any
		switch head.Kind {
		case "ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "ClusterRole":
			obj = &rbacv1.ClusterRole{}
		case "ClusterRoleBinding":
			obj = &rbacv1.ClusterRoleBinding{}
		case "ConfigMap":
			obj = &corev1.ConfigMap{}
		case "DaemonSet":
			obj = &appsv1.DaemonSet{}
		default:
			t.Fatalf("document %d: unexpected kind %q", i, head.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s: %v", head.Kind, err)
		}
		out[head.Kind] = obj
	}
	if len(out) != 5 {
		t.Fatalf("%d kinds, want ServiceAccount, ClusterRole, ClusterRoleBinding, ConfigMap, DaemonSet", len(out))
	}
	return out
}

func TestRBACIsMinimal(t *testing.T) {
	o := objects(t)
	cr := o["ClusterRole"].(*rbacv1.ClusterRole)
	want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}}}
	if len(cr.Rules) != 1 || !slices.Equal(cr.Rules[0].Verbs, want[0].Verbs) || !slices.Equal(cr.Rules[0].Resources, want[0].Resources) ||
		!slices.Equal(cr.Rules[0].APIGroups, want[0].APIGroups) {
		t.Fatalf("rules %+v, want %+v", cr.Rules, want)
	}
	crb := o["ClusterRoleBinding"].(*rbacv1.ClusterRoleBinding)
	sa := o["ServiceAccount"].(*corev1.ServiceAccount)
	if crb.RoleRef.Name != cr.Name || len(crb.Subjects) != 1 || crb.Subjects[0].Name != sa.Name || crb.Subjects[0].Namespace != sa.Namespace {
		t.Fatalf("binding %+v", crb)
	}
}

func TestDaemonSet(t *testing.T) {
	o := objects(t)
	ds := o["DaemonSet"].(*appsv1.DaemonSet)
	cm := o["ConfigMap"].(*corev1.ConfigMap)
	sa := o["ServiceAccount"].(*corev1.ServiceAccount)
	p := ds.Spec.Template.Spec
	if ds.Namespace != "kube-system" || cm.Namespace != "kube-system" || sa.Namespace != "kube-system" {
		t.Errorf("namespaces %s %s %s", ds.Namespace, cm.Namespace, sa.Namespace)
	}
	if !p.HostNetwork || p.PriorityClassName != "system-node-critical" || p.ServiceAccountName != sa.Name {
		t.Errorf("pod spec: hostNetwork %v priority %q sa %q", p.HostNetwork, p.PriorityClassName, p.ServiceAccountName)
	}
	if !slices.ContainsFunc(p.Tolerations, func(t corev1.Toleration) bool {
		return t.Operator == corev1.TolerationOpExists && t.Key == "" && t.Effect == ""
	}) {
		t.Errorf("tolerations %+v do not tolerate every taint", p.Tolerations)
	}
	u := ds.Spec.UpdateStrategy
	if u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate.MaxUnavailable.IntValue() != 1 || u.RollingUpdate.MaxSurge.IntValue() != 0 {
		t.Errorf("update strategy %+v: want one node at a time, no surge", u)
	}

	// The image's tag is the version.
	mainGo, _ := os.ReadFile("../cmd/cni-userstack/main.go")
	m := regexp.MustCompile(`var Version = "([^"]+)"`).FindSubmatch(mainGo)
	if m == nil {
		t.Fatal("no Version in cmd/cni-userstack/main.go")
	}
	wantImage := "localhost/cni-userstack:" + string(m[1])
	if len(p.InitContainers) != 1 || len(p.Containers) != 1 {
		t.Fatalf("%d init containers, %d containers", len(p.InitContainers), len(p.Containers))
	}
	in, d := p.InitContainers[0], p.Containers[0]
	for _, c := range []corev1.Container{in, d} {
		if c.Image != wantImage {
			t.Errorf("%s: image %q, want %q", c.Name, c.Image, wantImage)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("%s: no resource requests", c.Name)
		}
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
		}) {
			t.Errorf("%s: no NODE_NAME from the downward API", c.Name)
		}
		// Every ConfigMap key referenced exists.
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
				r := e.ValueFrom.ConfigMapKeyRef
				if _, ok := cm.Data[r.Key]; r.Name != cm.Name || !ok {
					t.Errorf("%s: env %s refers to %s/%s, not in the ConfigMap", c.Name, e.Name, r.Name, r.Key)
				}
				if !slices.Contains(c.Args, "--"+flagOf(r.Key)+"=$("+e.Name+")") {
					t.Errorf("%s: env %s is not passed as a flag", c.Name, e.Name)
				}
			}
		}
	}
	if in.Args[0] != "install" || !slices.Contains(in.Args, "--cni-conf-dir=/host/etc/cni/net.d") || !slices.Contains(in.Args, "--cni-bin-dir=/host/opt/cni/bin") {
		t.Errorf("init args %v", in.Args)
	}
	// The claim files live in the host's socket dir, mounted.
	if d.Args[0] != "serve" || !slices.Contains(d.Args, "--kubernetes") || !slices.Contains(d.Args, "--lock-dir=/run/cni-userstack") {
		t.Errorf("daemon args %v", d.Args)
	}
	// The plugin (conflist from install) and the daemon agree on paths.
	for _, f := range []string{"--socket=", "--state-dir=", "--stack-netns="} {
		i := slices.IndexFunc(in.Args, func(a string) bool { return strings.HasPrefix(a, f) })
		j := slices.IndexFunc(d.Args, func(a string) bool { return strings.HasPrefix(a, f) })
		if i < 0 || j < 0 || in.Args[i] != d.Args[j] {
			t.Errorf("%s differs between install and serve: %v / %v", f, in.Args, d.Args)
		}
	}
	if d.SecurityContext == nil || d.SecurityContext.Privileged == nil || !*d.SecurityContext.Privileged {
		t.Errorf("daemon not privileged: Bidirectional propagation needs it")
	}
	if in.SecurityContext == nil || in.SecurityContext.Privileged != nil || len(in.SecurityContext.Capabilities.Drop) != 1 {
		t.Errorf("install step has more privileges than it needs: %+v", in.SecurityContext)
	}
	for _, pr := range []struct {
		p    *corev1.Probe
		path string
	}{{d.LivenessProbe, "/healthz"}, {d.ReadinessProbe, "/readyz"}} {
		if pr.p == nil || pr.p.HTTPGet == nil || pr.p.HTTPGet.Host != "127.0.0.1" || pr.p.HTTPGet.Port.IntValue() != 9765 || pr.p.HTTPGet.Path != pr.path {
			t.Errorf("probe for %s: %+v", pr.path, pr.p)
		}
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, c := range []corev1.Container{in, d} {
		for _, m := range c.VolumeMounts {
			mounts[m.Name] = m
		}
	}
	hostPaths := map[string]string{}
	for _, v := range p.Volumes {
		if v.HostPath == nil {
			t.Errorf("volume %s is not a hostPath", v.Name)
			continue
		}
		hostPaths[v.Name] = v.HostPath.Path
		if _, ok := mounts[v.Name]; !ok {
			t.Errorf("volume %s is mounted nowhere", v.Name)
		}
	}
	for name, path := range map[string]string{"cni-bin": "/opt/cni/bin", "cni-conf": "/etc/cni/net.d", "netns": "/run/netns",
		"socket-dir": "/run/cni-userstack", "state-dir": "/var/lib/cni-userstack", "cni-data": "/var/lib/cni"} {
		if hostPaths[name] != path {
			t.Errorf("volume %s: host path %q, want %q", name, hostPaths[name], path)
		}
	}
	if m := mounts["netns"]; m.MountPath != "/var/run/netns" || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
		t.Errorf("netns mount %+v: the stack netns must propagate to the host", m)
	}
}

// flagOf maps a ConfigMap key to the install flag it feeds.
func flagOf(key string) string {
	return map[string]string{"mode": "mode", "mtu": "mtu", "clusterCIDR": "cluster-cidr", "routedRanges": "routed-ranges"}[key]
}
