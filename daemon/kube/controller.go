package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// DefaultResyncPeriod is how often the controller reconciles without an
// event: a route deleted by hand comes back within it.
const DefaultResyncPeriod = 60 * time.Second

// ControllerConfig configures a Controller.
type ControllerConfig struct {
	// NodeName is this node's Node object.
	NodeName string
	// Table is the host's routing table.
	Table RouteTable
	// ResyncPeriod is the reconcile period without events; 0 is
	// DefaultResyncPeriod.
	ResyncPeriod time.Duration
	Logger       *slog.Logger
	// Prepare, when set, runs in every pass once this node's pod CIDRs
	// are known, before any route is installed; an error fails the pass.
	// The daemon turns the host's forwarding of each family on there.
	Prepare func(own []netip.Prefix) error
}

// Status is what the controller has done, for logs and status answers.
type Status struct {
	// PodCIDRs are this node's, empty while it waits for them.
	PodCIDRs []netip.Prefix
	// Routes are the routes it owns after the last reconcile.
	Routes []Route
	// Reconciles counts completed passes; Errors the passes that failed
	// (LastError says why), Conflicts the desired routes left alone
	// because another owner routes their destination.
	Reconciles, Errors, Conflicts uint64
	LastError                     string
}

// Controller routes other nodes' pod CIDRs (see the package doc).
type Controller struct {
	cfg    ControllerConfig
	log    *slog.Logger
	inf    cache.SharedIndexInformer
	lister listersv1.NodeLister
	// kick holds at most one pending reconcile request.
	kick chan struct{}

	mu        sync.Mutex
	st        Status
	lastWarn  time.Time
	lastProbs string
}

// NewController builds a controller over a Node client; Run starts it.
func NewController(nodes NodeClient, cfg ControllerConfig) *Controller {
	if cfg.ResyncPeriod <= 0 {
		cfg.ResyncPeriod = DefaultResyncPeriod
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) { return nodes.List(ctx, o) },
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return nodes.Watch(ctx, o)
		},
	}
	inf := cache.NewSharedIndexInformer(lw, &corev1.Node{}, 0, cache.Indexers{})
	c := &Controller{cfg: cfg, log: cfg.Logger, inf: inf, lister: listersv1.NewNodeLister(inf.GetIndexer()),
		kick: make(chan struct{}, 1)}
	kick := func(any) { c.Kick() }
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    kick,
		UpdateFunc: func(_, _ any) { c.Kick() },
		DeleteFunc: kick,
	})
	return c
}

// Kick asks for a reconcile; a pending one absorbs it.
func (c *Controller) Kick() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Run starts the informer, waits for its first list, and reconciles on
// every kick and every ResyncPeriod until ctx ends. A failed pass is
// logged and retried at the next kick or tick; Run returns only when ctx
// ends or the informer never syncs.
func (c *Controller) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.inf.RunWithContext(ctx)
	}()
	defer func() { <-done }() // the informer stops with ctx
	if !cache.WaitForCacheSync(ctx.Done(), c.inf.HasSynced) {
		return fmt.Errorf("node informer: %w", ctx.Err())
	}
	c.log.Info("node informer synced; routing other nodes' pod CIDRs", "node", c.cfg.NodeName, "proto", fmt.Sprintf("0x%x", NodeRouteProtocol))
	tick := time.NewTicker(c.cfg.ResyncPeriod)
	defer tick.Stop()
	// Waiting for our CIDR needs a reminder more often than the resync.
	remind := time.NewTicker(NoCIDRLogEvery)
	defer remind.Stop()
	c.Kick()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.kick:
		case <-tick.C:
		case <-remind.C:
			if c.Status().PodCIDRs != nil {
				continue
			}
		}
		if err := c.Reconcile(); err != nil {
			c.log.Error("route reconcile failed; retried at the next node event or in the resync period", "err", err, "resync", c.cfg.ResyncPeriod)
		}
	}
}

// Reconcile is one pass: read this node's CIDRs and every other node from
// the informer's cache, plan against the table, apply. It is safe to call
// directly once the informer has synced (tests do).
func (c *Controller) Reconcile() (err error) {
	defer func() {
		c.mu.Lock()
		c.st.Reconciles++
		if err != nil {
			c.st.Errors++
			c.st.LastError = err.Error()
		}
		c.mu.Unlock()
	}()
	self, err := c.lister.Get(c.cfg.NodeName)
	var own []netip.Prefix
	switch {
	case apierrors.IsNotFound(err):
		c.waiting(fmt.Sprintf("%v: no Node %q in the API yet (is --node-name / NODE_NAME right?)", ErrNoNode, c.cfg.NodeName))
		return nil
	case err != nil:
		return err
	}
	if own, err = PodCIDRs(self); err != nil {
		return err
	}
	if len(own) == 0 {
		c.waiting(NoCIDRReason)
		return nil
	}
	c.mu.Lock()
	if !slices.Equal(c.st.PodCIDRs, own) {
		c.log.Info("this node's pod CIDRs", "node", c.cfg.NodeName, "podCIDRs", own)
		c.st.PodCIDRs = own
	}
	c.mu.Unlock()
	if c.cfg.Prepare != nil {
		if err := c.cfg.Prepare(own); err != nil {
			return err
		}
	}

	nodes, err := c.lister.List(labels.Everything())
	if err != nil {
		return err
	}
	desired, problems := DesiredRoutes(c.cfg.NodeName, own, nodes)
	c.reportProblems(problems)
	table, err := c.cfg.Table.List()
	if err != nil {
		return err
	}
	plan := PlanRoutes(desired, table)
	var errs []error
	for _, r := range plan.Delete {
		if err := c.cfg.Table.Delete(r); err != nil {
			errs = append(errs, fmt.Errorf("delete route %v: %w", r.Dst, err))
			continue
		}
		c.log.Info("route removed: its node is gone or its pod CIDR changed", "dst", r.Dst, "via", r.Via)
	}
	failed := map[netip.Prefix]bool{}
	for _, r := range plan.Replace {
		if err := c.cfg.Table.Replace(r); err != nil {
			failed[r.Dst] = true
			if errors.Is(err, ErrUnreachable) {
				err = fmt.Errorf("%w: node %s's InternalIP %v is not on this node's L2 network (cni-userstack routes between nodes of one L2 network only)", err, r.Node, r.Via)
			}
			errs = append(errs, fmt.Errorf("route %v via %v to node %s: %w", r.Dst, r.Via, r.Node, err))
			continue
		}
		c.log.Info("route installed", "dst", r.Dst, "via", r.Via, "node", r.Node)
	}
	for _, cf := range plan.Conflicts {
		failed[cf.Want.Dst] = true
		c.log.Warn("route not installed: the table already routes its destination with a route cni-userstack does not own",
			"dst", cf.Want.Dst, "node", cf.Want.Node, "ownerProto", cf.Owner)
	}
	var have []Route
	for _, r := range desired {
		if !failed[r.Dst] {
			have = append(have, r)
		}
	}
	c.mu.Lock()
	c.st.Routes = have
	c.st.Conflicts += uint64(len(plan.Conflicts))
	c.mu.Unlock()
	return errors.Join(errs...)
}

// waiting logs why no route is installed, at most every NoCIDRLogEvery.
func (c *Controller) waiting(why string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st.PodCIDRs = nil
	if time.Since(c.lastWarn) >= NoCIDRLogEvery {
		c.lastWarn = time.Now()
		c.log.Warn("waiting for this node's pod CIDR before routing other nodes", "node", c.cfg.NodeName, "why", why)
	}
}

// reportProblems logs the nodes that cannot be routed when the list
// changes.
func (c *Controller) reportProblems(problems []string) {
	s := fmt.Sprint(problems)
	c.mu.Lock()
	defer c.mu.Unlock()
	if s == c.lastProbs {
		return
	}
	c.lastProbs = s
	for _, p := range problems {
		c.log.Warn("node not routed", "problem", p)
	}
}

// Status returns a copy of the controller's status.
func (c *Controller) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.st
	st.PodCIDRs = slices.Clone(st.PodCIDRs)
	st.Routes = slices.Clone(st.Routes)
	return st
}
