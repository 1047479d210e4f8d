package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// NodeClient is what the node agent reads from the API: Nodes, nothing
// else. Its methods are those of client-go's typed NodeInterface, so a
// fake clientset's CoreV1().Nodes() is one (tests); NewClient returns the
// real one.
type NodeClient interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error)
	List(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// NewClient returns a client of the Nodes of the cluster from the
// kubeconfig file, or from the in-cluster service account when kubeconfig
// is empty (a pod of the DaemonSet).
//
// It is a REST client with a scheme of the core/v1 types only, not
// client-go's clientset: the clientset's scheme registers every API group
// at process start, and this binary is also the CNI plugin, executed for
// every ADD and DEL (it cost ~20 ms per exec).
func NewClient(kubeconfig, userAgent string) (NodeClient, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig == "" {
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster config: %w (outside a pod, pass --kubeconfig)", err)
		}
	} else {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
		}
	}
	cfg.UserAgent = userAgent
	// A node agent's load on the API server is small: one watch and, at
	// start, a list.
	cfg.QPS, cfg.Burst = 5, 10
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	cfg.GroupVersion = &corev1.SchemeGroupVersion
	cfg.APIPath = "/api"
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, err
	}
	return restNodes{rc: rc}, nil
}

// restNodes is NodeClient over the REST client, as client-go's typed
// client does it.
type restNodes struct{ rc *rest.RESTClient }

func (n restNodes) Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error) {
	out := &corev1.Node{}
	err := n.rc.Get().Resource("nodes").Name(name).VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(out)
	return out, err
}

func (n restNodes) List(ctx context.Context, opts metav1.ListOptions) (*corev1.NodeList, error) {
	out := &corev1.NodeList{}
	err := n.rc.Get().Resource("nodes").VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).Into(out)
	return out, err
}

func (n restNodes) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return n.rc.Get().Resource("nodes").VersionedParams(&opts, metav1.ParameterCodec).Watch(ctx)
}

// PodCIDRs returns a node's pod CIDRs: spec.podCIDRs, or spec.podCIDR
// for an object written before dual-stack. Nil with no error: none
// allocated yet.
func PodCIDRs(n *corev1.Node) ([]netip.Prefix, error) {
	raw := n.Spec.PodCIDRs
	if len(raw) == 0 && n.Spec.PodCIDR != "" {
		raw = []string{n.Spec.PodCIDR}
	}
	var out []netip.Prefix
	for _, s := range raw {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("node %s: pod CIDR %q: %v", n.Name, s, err)
		}
		if p != p.Masked() {
			return nil, fmt.Errorf("node %s: pod CIDR %q is not a network address", n.Name, s)
		}
		out = append(out, p)
	}
	return out, nil
}

// InternalIPs returns a node's addresses of type InternalIP, in the order
// of status.addresses.
func InternalIPs(n *corev1.Node) []netip.Addr {
	var out []netip.Addr
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// Route is a host route to another node's pod CIDR: Dst via Via.
type Route struct {
	Dst  netip.Prefix
	Via  netip.Addr
	Node string // the node it leads to (for logs; not part of the identity)
}

func (r Route) String() string { return fmt.Sprintf("%v via %v", r.Dst, r.Via) }

// DesiredRoutes is what the host's table must hold for the nodes other
// than self: one route per pod CIDR via the node's first InternalIP of the
// same family. own are self's pod CIDRs. A node that cannot be routed (no
// InternalIP of the family, a pod CIDR overlapping ours or an earlier
// node's) is skipped and described in problems. Nodes are taken in name
// order, so the answer is the same for the same objects.
func DesiredRoutes(self string, own []netip.Prefix, nodes []*corev1.Node) (routes []Route, problems []string) {
	sorted := append([]*corev1.Node(nil), nodes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	taken := map[netip.Prefix]string{}
	for _, p := range own {
		taken[p] = self
	}
	for _, n := range sorted {
		if n.Name == self {
			continue
		}
		cidrs, err := PodCIDRs(n)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		ips := InternalIPs(n)
	cidr:
		for _, c := range cidrs {
			for q, owner := range taken {
				if q.Overlaps(c) {
					problems = append(problems, fmt.Sprintf("node %s: pod CIDR %v overlaps %v of node %s: not routed", n.Name, c, q, owner))
					continue cidr
				}
			}
			var via netip.Addr
			for _, ip := range ips {
				if ip.Is4() == c.Addr().Is4() {
					via = ip
					break
				}
			}
			if !via.IsValid() {
				problems = append(problems, fmt.Sprintf("node %s: no InternalIP of the family of pod CIDR %v: not routed", n.Name, c))
				continue
			}
			taken[c] = n.Name
			routes = append(routes, Route{Dst: c, Via: via, Node: n.Name})
		}
	}
	return routes, problems
}

// TableRoute is a route of the host's table as the controller sees it.
type TableRoute struct {
	Dst   netip.Prefix
	Via   netip.Addr // invalid when the route has no gateway
	Proto int        // rtm_protocol
}

// Owned reports whether the controller installed it.
func (t TableRoute) Owned() bool { return t.Proto == NodeRouteProtocol }

// Conflict is a desired route whose destination the table already routes
// with a route the controller does not own.
type Conflict struct {
	Want  Route
	Owner int // the other route's protocol
}

// Plan is what a reconcile does to the table.
type Plan struct {
	Replace   []Route      // install, or repoint ours (ip route replace)
	Delete    []TableRoute // ours, no longer wanted
	Conflicts []Conflict   // left alone: not ours
}

// PlanRoutes compares the desired routes with the table: a desired route
// is replaced unless an owned route already has its destination and
// gateway, or a route the controller does not own has its destination
// (a conflict: never touched); every owned route whose destination is not
// desired is deleted. Only owned routes are ever deleted.
func PlanRoutes(desired []Route, table []TableRoute) Plan {
	var p Plan
	want := map[netip.Prefix]bool{}
	for _, d := range desired {
		want[d.Dst] = true
	}
	byDst := map[netip.Prefix][]TableRoute{}
	for _, t := range table {
		byDst[t.Dst] = append(byDst[t.Dst], t)
	}
	for _, d := range desired {
		ok, foreign := false, -1
		for _, t := range byDst[d.Dst] {
			switch {
			case !t.Owned():
				foreign = t.Proto
			case t.Via == d.Via:
				ok = true
			}
		}
		switch {
		case foreign >= 0:
			p.Conflicts = append(p.Conflicts, Conflict{Want: d, Owner: foreign})
		case !ok:
			p.Replace = append(p.Replace, d)
		}
	}
	for _, t := range table {
		if t.Owned() && !want[t.Dst] {
			p.Delete = append(p.Delete, t)
		}
	}
	return p
}

// NoCIDRLogEvery is how often a wait for this node's pod CIDR says why it
// still waits.
const NoCIDRLogEvery = 30 * time.Second

// ErrNoNode is wrapped when the node's object does not exist.
var ErrNoNode = errors.New("node object not found")

// WaitPodCIDRs polls the node's object every interval until it has a pod
// CIDR, and returns them. Every NoCIDRLogEvery it logs why it waits (no
// object yet, or no CIDR: kube-controller-manager allocates them with
// --allocate-node-cidrs and --cluster-cidr). It returns ctx's error when
// ctx ends first.
func WaitPodCIDRs(ctx context.Context, cs NodeClient, node string, interval time.Duration, log *slog.Logger) ([]netip.Prefix, error) {
	var lastLog time.Time
	for {
		cidrs, why, err := nodeCIDRs(ctx, cs, node)
		if err != nil {
			return nil, err
		}
		if len(cidrs) > 0 {
			return cidrs, nil
		}
		if time.Since(lastLog) >= NoCIDRLogEvery {
			log.Warn("waiting for this node's pod CIDR", "node", node, "why", why)
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("node %s: %s: %w", node, why, ctx.Err())
		case <-time.After(interval):
		}
	}
}

// nodeCIDRs reads the node once: its CIDRs, or why there are none yet. A
// malformed CIDR is an error (a wrong config is worse than none).
func nodeCIDRs(ctx context.Context, cs NodeClient, node string) ([]netip.Prefix, string, error) {
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	n, err := cs.Get(cctx, node, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Sprintf("%v: the kubelet has not registered node %q yet (is --node-name / NODE_NAME right?)", ErrNoNode, node), nil
	case err != nil:
		return nil, fmt.Sprintf("cannot read the node object: %v", err), nil
	}
	cidrs, err := PodCIDRs(n)
	if err != nil {
		return nil, "", err
	}
	return cidrs, NoCIDRReason, nil
}

// NoCIDRReason says why a registered node has no pod CIDR.
const NoCIDRReason = "spec.podCIDRs is empty: kube-controller-manager allocates pod CIDRs when it runs with " +
	"--allocate-node-cidrs=true and --cluster-cidr (kubeadm: --pod-network-cidr); until then this node gets no " +
	"CNI config and stays NotReady"
