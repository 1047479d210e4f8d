package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fakeAPI serves /api/v1/nodes (get, list, watch) as the API server does,
// from a map it can change; a watch streams one event per change.
type fakeAPI struct {
	mu     sync.Mutex
	nodes  map[string]*corev1.Node
	rv     int
	events chan string // JSON watch events
	paths  []string
	agents []string
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.paths = append(f.paths, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery)
	f.agents = append(f.agents, r.UserAgent())
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.URL.Path == "/api/v1/nodes" && r.URL.Query().Get("watch") == "true":
		fl := w.(http.Flusher)
		w.WriteHeader(200)
		fl.Flush()
		for {
			select {
			case e := <-f.events:
				fmt.Fprintln(w, e)
				fl.Flush()
			case <-r.Context().Done():
				return
			}
		}
	case r.URL.Path == "/api/v1/nodes":
		f.mu.Lock()
		l := corev1.NodeList{TypeMeta: metav1.TypeMeta{Kind: "NodeList", APIVersion: "v1"}, ListMeta: metav1.ListMeta{ResourceVersion: fmt.Sprint(f.rv)}}
		for _, n := range f.nodes {
			l.Items = append(l.Items, *n)
		}
		f.mu.Unlock()
		json.NewEncoder(w).Encode(l)
	case strings.HasPrefix(r.URL.Path, "/api/v1/nodes/"):
		f.mu.Lock()
		n, ok := f.nodes[strings.TrimPrefix(r.URL.Path, "/api/v1/nodes/")]
		f.mu.Unlock()
		if !ok {
			w.WriteHeader(404)
			json.NewEncoder(w).Encode(metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: "Failure", Reason: metav1.StatusReasonNotFound, Code: 404,
				Message: fmt.Sprintf("nodes %q not found", strings.TrimPrefix(r.URL.Path, "/api/v1/nodes/"))})
			return
		}
		json.NewEncoder(w).Encode(n)
	default:
		w.WriteHeader(404)
	}
}

// put adds or replaces a node and sends its watch event.
func (f *fakeAPI) put(n *corev1.Node, typ string) {
	f.mu.Lock()
	f.rv++
	n = n.DeepCopy()
	n.TypeMeta = metav1.TypeMeta{Kind: "Node", APIVersion: "v1"}
	n.ResourceVersion = fmt.Sprint(f.rv)
	f.nodes[n.Name] = n
	f.mu.Unlock()
	b, _ := json.Marshal(map[string]any{"type": typ, "object": n})
	f.events <- string(b)
}

// TestRESTClient runs NewClient's REST client against a fake API server
// over a kubeconfig: Get (found, not found), WaitPodCIDRs, and the
// controller's informer (list, then watch events) routing a node that
// arrives by watch.
func TestRESTClient(t *testing.T) {
	api := &fakeAPI{nodes: map[string]*corev1.Node{}, events: make(chan string, 16)}
	api.nodes["self"] = node("self", []string{"10.244.0.0/24"}, "192.168.1.1")
	srv := httptest.NewServer(api)
	defer srv.Close()
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	os.WriteFile(kc, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q}}]
users: [{name: u, user: {token: t0k3n}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`, srv.URL)), 0o600)
	cl, err := NewClient(kc, "cni-userstack-test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := cl.Get(ctx, "self", metav1.GetOptions{})
	if err != nil || n.Name != "self" || n.Spec.PodCIDRs[0] != "10.244.0.0/24" {
		t.Fatalf("get: %+v %v", n, err)
	}
	if _, err := cl.Get(ctx, "nope", metav1.GetOptions{}); !apierrors.IsNotFound(err) || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("get missing: %v", err)
	}
	cidrs, err := WaitPodCIDRs(ctx, cl, "self", time.Millisecond, discard())
	if err != nil || !slices.Equal(cidrs, []netip.Prefix{pfx("10.244.0.0/24")}) {
		t.Fatalf("wait: %v %v", cidrs, err)
	}

	tbl := newFakeTable("192.168.1.0/24")
	c := NewController(cl, ControllerConfig{NodeName: "self", Table: tbl, Logger: discard()})
	go c.Run(ctx)
	eventually(t, "informer synced and reconciled", func() bool { return c.Status().Reconciles > 0 }, tbl.snapshot)
	api.put(node("b", []string{"10.244.5.0/24"}, "192.168.1.5"), "ADDED")
	eventually(t, "route from a watch event", func() bool {
		return strings.Contains(tbl.snapshot(), "10.244.5.0/24 via 192.168.1.5 proto 0x76")
	}, tbl.snapshot)

	api.mu.Lock()
	defer api.mu.Unlock()
	if !slices.ContainsFunc(api.paths, func(p string) bool { return strings.Contains(p, "watch=true") }) {
		t.Errorf("no watch request: %v", api.paths)
	}
	if !slices.Contains(api.agents, "cni-userstack-test") {
		t.Errorf("user agents %v", api.agents)
	}
}
