package daemon

import (
	"net/netip"
	"reflect"
	"testing"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/daemon/kube"
)

// The route controller's status reaches `status` and `stats` (and so
// /metrics) in the API's terms; a controller still waiting for its pod
// CIDR reports empty lists, not nulls.
func TestKubeStatusInStatusAndStats(t *testing.T) {
	var ks kube.Status
	store, err := OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d := New(Config{Socket: "unused", StateDir: t.TempDir(), Logger: discardLogger(),
		Kube: func() *api.KubeStatus { return kubeStatus("n1", ks) }}, store, &fakeAttacher{})

	waiting := &api.KubeStatus{Node: "n1", PodCIDRs: []netip.Prefix{}, Routes: []api.KubeRoute{}, Reconciles: 1}
	ks = kube.Status{Reconciles: 1}
	if got := d.Status().Kubernetes; !reflect.DeepEqual(got, waiting) {
		t.Errorf("waiting: status %+v, want %+v", got, waiting)
	}

	ks = kube.Status{PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")},
		Routes:     []kube.Route{{Dst: netip.MustParsePrefix("10.244.1.0/24"), Via: netip.MustParseAddr("192.168.1.2"), Node: "n2"}},
		Reconciles: 5, Errors: 1, Conflicts: 2, LastError: "boom"}
	want := &api.KubeStatus{Node: "n1", PodCIDRs: ks.PodCIDRs,
		Routes:     []api.KubeRoute{{Dst: netip.MustParsePrefix("10.244.1.0/24"), Via: netip.MustParseAddr("192.168.1.2"), Node: "n2"}},
		Reconciles: 5, Errors: 1, Conflicts: 2, LastError: "boom"}
	if got := d.Status().Kubernetes; !reflect.DeepEqual(got, want) {
		t.Errorf("status %+v, want %+v", got, want)
	}
	if got := d.Stats().Kubernetes; !reflect.DeepEqual(got, want) {
		t.Errorf("stats %+v, want %+v", got, want)
	}

	plain := New(Config{Socket: "unused", StateDir: t.TempDir(), Logger: discardLogger()}, store, &fakeAttacher{})
	if plain.Status().Kubernetes != nil || plain.Stats().Kubernetes != nil {
		t.Error("a daemon without --kubernetes reports a kubernetes section")
	}
}
