package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cni-userstack/cni-userstack/daemon/api"
)

// gauges: MIB entries that are levels, not counts; they are exported as
// gauges of their own rather than in cni_userstack_netstat_total.
var gauges = map[string]bool{"TcpCurrEstab": true}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("cni_userstack_"+name, help, labels, nil)
}

// collector reads the daemon at scrape time.
type collector struct {
	src     Source
	version string
	ready   func() bool

	nicPackets, nicBytes, nicDropped, nicErrors, nicKernelDrops, nicInfo, nicUp *prometheus.Desc
	nicBusyPoll, nicBusyPollHost                                                *prometheus.Desc

	drops, netstat                                          *prometheus.Desc
	ctEntries, ctLimit, ctOps                               *prometheus.Desc
	flowsActive, flowsPending, flowsOpened, flowsRefused    *prometheus.Desc
	flowsTimeouts, flowLimitDrops, udpPortUnreach, echoReq  *prometheus.Desc
	udpDropped                                              *prometheus.Desc
	icmpErrors, echoRaw                                     *prometheus.Desc
	portMapConns, dnsQueries, dnsFailures                   *prometheus.Desc
	neighbours, tcpRetrans, tcpRTO, tcpSockets              *prometheus.Desc
	attachments, readyDesc, buildInfo                       *prometheus.Desc
	kubePodCIDRs, kubeRoutes, kubeReconciles, kubeConflicts *prometheus.Desc
}

func newCollector(src Source, version string, ready func() bool) *collector {
	return &collector{
		src: src, version: version, ready: ready,
		nicPackets:      desc("nic_packets_total", "Frames a NIC received (direction rx) or sent (tx).", "nic", "direction"),
		nicBytes:        desc("nic_bytes_total", "Bytes of the frames a NIC received (rx) or sent (tx), Ethernet header included.", "nic", "direction"),
		nicDropped:      desc("nic_dropped_total", "Frames a NIC dropped: received and freed by any layer (rx), or not sent (tx).", "nic", "direction"),
		nicErrors:       desc("nic_errors_total", "Read (rx) or write (tx) errors of a NIC's link.", "nic", "direction"),
		nicKernelDrops:  desc("nic_kernel_drops_total", "Frames the kernel dropped before the stack read them (a full AF_PACKET receive buffer).", "nic"),
		nicInfo:         desc("nic_info", "One series per NIC naming its kind (pod, uplink) and, for a pod link, the pod; value 1.", "nic", "kind", "namespace", "pod", "container_id", "ip", "mode"),
		nicUp:           desc("nic_up", "1 when the NIC is administratively up.", "nic"),
		nicBusyPoll:     desc("nic_busy_poll_total", "Busy polls of a NIC's link (serve --busy-poll), by outcome: hit (a frame came while polling: a wake-up saved), sleep (the budget ran out), yield (another thread wanted the CPU), skip (every polling slot taken).", "nic", "outcome"),
		nicBusyPollHost: desc("nic_busy_poll_host_events_total", "Proxy host-socket events a NIC's busy polls handled (serve --busy-poll): relayed answers from the host caught without a wake-up.", "nic"),
		drops:           desc("drops_total", "Packets the stack freed, by drop reason (the kernel's SKB_DROP_REASON names) and the layer that declares it.", "layer", "reason"),
		netstat:         desc("netstat_total", "Every MIB counter of the stack by its nstat name (IpInReceives, TcpRetransSegs, ...), and the daemon's own (PodSrcMACDrops, ProxyDiverted, ...).", "counter"),
		ctEntries:       desc("conntrack_entries", "Flows in the connection tracking table."),
		ctLimit:         desc("conntrack_limit", "Bound of the connection tracking table (nf_conntrack_max)."),
		ctOps:           desc("conntrack_operations_total", "Connection tracking events (conntrack -S): found, new, invalid, insert, insert_failed, drop (table full), early_drop, expired, deleted.", "op"),
		flowsActive:     desc("proxy_flows_active", "Proxy-mode flows relaying now, by protocol (tcp, udp, icmp).", "protocol"),
		flowsPending:    desc("proxy_flows_pending", "Proxy-mode TCP flows whose upstream connect or pod handshake is in progress.", "protocol"),
		flowsOpened:     desc("proxy_flows_opened_total", "Proxy-mode flows opened, by protocol: TCP upstream connections accepted, UDP host sockets, ICMP ping sockets.", "protocol"),
		flowsRefused:    desc("proxy_flows_refused_total", "Proxy-mode flows refused, by protocol and reason: tcp refused (ECONNREFUSED) or unreachable (no route, other dial errors), tcp, udp and icmp no_resources (no host socket: the daemon out of file descriptors or kernel memory), icmp denied (ping sockets refused by the host).", "protocol", "reason"),
		flowsTimeouts:   desc("proxy_flows_timeouts_total", "Proxy-mode flows ended by a timeout, by protocol and kind: tcp connect (upstream connect bound), udp and icmp idle (no traffic for the idle timeout), udp evicted (a flow that is no stream, answered or quiet, closed early to make room for a new one at a flow limit).", "protocol", "kind"),
		flowLimitDrops:  desc("proxy_flow_limit_drops_total", "Proxy-mode flows refused by the per-pod or per-node flow limit."),
		udpPortUnreach:  desc("proxy_udp_port_unreachables_total", "ICMP port unreachables passed to pods for UDP datagrams the host refused."),
		udpDropped:      desc("proxy_udp_dropped_total", "Pods' UDP datagrams to the outside dropped: no host socket could be opened for the flow (no route, EACCES, out of descriptors), or its send buffer was full."),
		echoReq:         desc("proxy_echo_requests_total", "ICMP echo requests from pods to the outside, by result: relayed, denied (neither a ping socket nor the raw socket allowed), dropped.", "result"),
		echoRaw:         desc("proxy_echo_raw_requests_total", "Of the relayed echo requests, those sent through the daemon's raw ICMP socket because the host refuses ping sockets."),
		icmpErrors:      desc("proxy_icmp_errors_total", "ICMP errors the host reported about a pod's relayed datagram (protocol udp, port unreachables included) or echo request (icmp), passed on to the pod quoting what it sent.", "protocol"),
		portMapConns:    desc("portmap_connections_total", "TCP connections to pods' host ports (port mappings) relayed into the pods."),
		dnsQueries:      desc("dns_queries_total", "DNS queries (UDP) and DNS-over-TCP connections to the gateway, relayed to the host's resolvers."),
		dnsFailures:     desc("dns_failures_total", "DNS queries no nameserver answered, malformed ones and those over the in-flight bound."),
		neighbours:      desc("neighbours", "Neighbour (ARP) table entries by NUD state.", "state"),
		tcpRetrans:      desc("tcp_retransmits_total", "TCP segments retransmitted (TcpRetransSegs)."),
		tcpRTO:          desc("tcp_rto_total", "TCP retransmission timeouts (TcpExtTCPTimeouts)."),
		tcpSockets:      desc("tcp_sockets", "TCP sockets of the stack by state (RFC 9293 names; LISTEN for listeners).", "state"),
		attachments:     desc("attachments", "Pod links attached, by egress mode (proxy, route).", "mode"),
		readyDesc:       desc("ready", "1 once start-up recovery finished (what /readyz says)."),
		buildInfo:       desc("build_info", "The daemon's version; value 1.", "version"),
		kubePodCIDRs:    desc("kube_pod_cidrs", "serve --kubernetes: this node's pod CIDRs (spec.podCIDRs) as the route controller last read them; 0 while it waits for them and routes nothing."),
		kubeRoutes:      desc("kube_routes", "serve --kubernetes: host routes to other nodes' pod CIDRs the route controller owns (proto 0x76) after its last pass."),
		kubeReconciles:  desc("kube_reconciles_total", "serve --kubernetes: route controller passes, by result (ok, error: the daemon's log and `cni-userstack status` say why).", "result"),
		kubeConflicts:   desc("kube_route_conflicts_total", "serve --kubernetes: routes to another node's pod CIDR not installed because a route cni-userstack does not own already covers the destination (counted per pass)."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.nicPackets, c.nicBytes, c.nicDropped, c.nicErrors, c.nicKernelDrops, c.nicInfo,
		c.nicBusyPoll, c.nicBusyPollHost,
		c.nicUp, c.drops, c.netstat, c.ctEntries, c.ctLimit, c.ctOps, c.flowsActive, c.flowsPending, c.flowsOpened,
		c.flowsRefused, c.flowsTimeouts, c.flowLimitDrops, c.udpPortUnreach, c.udpDropped, c.echoReq, c.echoRaw, c.icmpErrors, c.portMapConns, c.dnsQueries,
		c.dnsFailures, c.neighbours, c.tcpRetrans, c.tcpRTO, c.tcpSockets, c.attachments, c.readyDesc, c.buildInfo,
		c.kubePodCIDRs, c.kubeRoutes, c.kubeReconciles, c.kubeConflicts} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	ready := 1.0
	if c.ready != nil && !c.ready() {
		ready = 0
	}
	gauge(c.readyDesc, ready)
	gauge(c.buildInfo, 1, c.version)

	for _, l := range c.src.Links() {
		s := l.Stats
		counter(c.nicPackets, s.RxPackets, l.Name, "rx")
		counter(c.nicPackets, s.TxPackets, l.Name, "tx")
		counter(c.nicBytes, s.RxBytes, l.Name, "rx")
		counter(c.nicBytes, s.TxBytes, l.Name, "tx")
		counter(c.nicDropped, s.RxDropped, l.Name, "rx")
		counter(c.nicDropped, s.TxDropped, l.Name, "tx")
		counter(c.nicErrors, s.RxErrors, l.Name, "rx")
		counter(c.nicErrors, s.TxErrors, l.Name, "tx")
		counter(c.nicKernelDrops, l.KernelDrops, l.Name)
		if b := l.BusyPoll; b != nil {
			counter(c.nicBusyPoll, b.Hits, l.Name, "hit")
			counter(c.nicBusyPoll, b.Sleeps, l.Name, "sleep")
			counter(c.nicBusyPoll, b.Yields, l.Name, "yield")
			counter(c.nicBusyPoll, b.Skips, l.Name, "skip")
			counter(c.nicBusyPollHost, b.HostEvents, l.Name)
		}
		up := 0.0
		if l.Up {
			up = 1
		}
		gauge(c.nicUp, up, l.Name)
		var ns, name, ctr, ip, mode string
		if p := l.Pod; p != nil {
			ns, name, ctr, ip, mode = p.Namespace, p.Name, p.ContainerID, p.IP.Addr().String(), string(p.Mode)
		}
		gauge(c.nicInfo, 1, l.Name, l.Kind, ns, name, ctr, ip, mode)
	}

	st := c.src.Stats()
	for _, d := range st.Drops {
		counter(c.drops, d.Count, d.Layer, d.Reason)
	}
	for _, k := range sortedKeys(st.Counters) {
		if !gauges[k] {
			counter(c.netstat, st.Counters[k], k)
		}
	}
	counter(c.tcpRetrans, st.Counters["TcpRetransSegs"])
	counter(c.tcpRTO, st.Counters["TcpExtTCPTimeouts"])
	for _, k := range sortedKeys(st.TCP) {
		gauge(c.tcpSockets, float64(st.TCP[k]), k)
	}
	for _, k := range sortedKeys(st.Neigh) {
		gauge(c.neighbours, float64(st.Neigh[k]), k)
	}
	for _, m := range []api.Mode{api.ModeProxy, api.ModeRoute} {
		gauge(c.attachments, float64(st.Attached[m]), string(m))
	}
	if ct := st.Conntrack; ct != nil {
		gauge(c.ctEntries, float64(ct.Count))
		gauge(c.ctLimit, float64(ct.Max))
		s := ct.Stats
		for op, v := range map[string]uint64{"found": s.Found, "new": s.New, "invalid": s.Invalid, "insert": s.Insert,
			"insert_failed": s.InsertFailed, "drop": s.Drop, "early_drop": s.EarlyDrop, "expired": s.Expired, "deleted": s.Deleted} {
			counter(c.ctOps, v, op)
		}
	}
	if k := st.Kubernetes; k != nil {
		gauge(c.kubePodCIDRs, float64(len(k.PodCIDRs)))
		gauge(c.kubeRoutes, float64(len(k.Routes)))
		counter(c.kubeReconciles, k.Reconciles-k.Errors, "ok")
		counter(c.kubeReconciles, k.Errors, "error")
		counter(c.kubeConflicts, k.Conflicts)
	}
	if p := st.Proxy; p != nil {
		gauge(c.flowsActive, float64(p.ActiveTCP), "tcp")
		gauge(c.flowsActive, float64(p.ActiveUDP), "udp")
		gauge(c.flowsActive, float64(p.ActiveEcho), "icmp")
		gauge(c.flowsPending, float64(p.PendingTCP), "tcp")
		counter(c.flowsOpened, p.TCPAccepted, "tcp")
		counter(c.flowsOpened, p.UDPFlowsOpened, "udp")
		counter(c.flowsOpened, p.EchoFlowsOpened, "icmp")
		counter(c.flowsRefused, p.TCPRefused, "tcp", "refused")
		counter(c.flowsRefused, p.TCPUnreachable, "tcp", "unreachable")
		counter(c.flowsRefused, p.TCPNoResources, "tcp", "no_resources")
		counter(c.flowsRefused, p.UDPNoResources, "udp", "no_resources")
		counter(c.flowsRefused, p.EchoNoResources, "icmp", "no_resources")
		counter(c.flowsRefused, p.EchoDenied, "icmp", "denied")
		counter(c.flowsTimeouts, p.TCPTimeouts, "tcp", "connect")
		counter(c.flowsTimeouts, p.UDPIdleTimeouts, "udp", "idle")
		counter(c.flowsTimeouts, p.UDPEvicted, "udp", "evicted")
		counter(c.flowsTimeouts, p.EchoIdleTimeouts, "icmp", "idle")
		counter(c.flowLimitDrops, p.FlowLimitDrops)
		counter(c.udpPortUnreach, p.UDPPortUnreachables)
		counter(c.udpDropped, p.UDPDropped)
		counter(c.echoReq, p.EchoRelayed, "relayed")
		counter(c.echoReq, p.EchoDenied, "denied")
		counter(c.echoReq, p.EchoDropped, "dropped")
		counter(c.echoRaw, p.EchoRawRelayed)
		counter(c.icmpErrors, p.UDPICMPErrors, "udp")
		counter(c.icmpErrors, p.EchoICMPErrors, "icmp")
		counter(c.portMapConns, p.PortMapConns)
		counter(c.dnsQueries, p.DNSQueries)
		counter(c.dnsFailures, p.DNSFailures)
	}
}
