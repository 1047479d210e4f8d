// Package kube owns the Kubernetes side of cni-userstack: the API client
// (in-cluster or a kubeconfig), the facts read from Node objects (pod
// CIDRs, InternalIPs), waiting for this node's pod CIDR, and the route
// controller of `serve --kubernetes`, which installs a host route to every
// other node's pod CIDR via that node's InternalIP, as kindnet does.
//
// Not owned here: the conflist the pod CIDRs feed (package install), the
// stack and the uplink routes to this node's own pods (daemon), the
// command line (cmd/cni-userstack, daemon.ServeFlags).
//
// # Theory of operation
//
// One shared informer watches every Node (the ClusterRole grants nodes
// get, list and watch, nothing else). The controller is level-triggered:
// any Node event (or the resync tick, ResyncPeriod) kicks one worker that
// recomputes the whole desired set from the informer's cache with
// DesiredRoutes — a pure function of the Node objects — reads the host's
// main routing table and applies PlanRoutes' answer: replace what is
// missing or points elsewhere, delete what is ours and no longer wanted.
// The kick channel holds one pending kick (a burst of events is one
// reconcile); nothing else is queued, so memory is bounded by the
// informer's cache.
//
// Ownership: every route the controller installs carries the rtnetlink
// protocol NodeRouteProtocol (0x76, 118; `ip route` shows "proto 0x76").
// The controller lists, replaces and deletes only routes with that
// protocol, and refuses to install a route to a destination that the
// table already routes with another protocol (another CNI's, a static
// route): that is a conflict, logged with the owner's protocol and left
// alone. The daemon's routes to this node's own pods over the uplink use
// another protocol (0x75) and are never seen as the controller's.
//
// Until this node's Node object has a pod CIDR, the controller installs
// nothing and logs why every NoCIDRLogEvery (kube-controller-manager
// without --allocate-node-cidrs is the usual cause): its own CIDR is needed
// to refuse another node's overlapping one. Routes survive the daemon's
// exit, like the uplink's (a restarted daemon reconciles them); a Node
// deleted while no daemon ran is removed at the next start.
//
// Limits: nodes on one L2 network only — the InternalIP must be directly
// reachable, as kindnet assumes; the kernel refuses a gateway that is not
// on a connected network and the node is logged as unreachable. One route
// per pod CIDR of each node (at most two: one per family).
package kube
