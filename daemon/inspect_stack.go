package daemon

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/capture"
	"github.com/cni-userstack/cni-userstack/netstack/dev"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/link/afpacket"
	"github.com/cni-userstack/cni-userstack/netstack/neigh"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/route"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
)

// Inspector is what the read-only endpoints (inspect.go) and the metrics
// read of the stack. *StackAttacher is the one; an attacher that is not
// (the tests' fakes) leaves those endpoints unavailable.
type Inspector interface {
	// Links lists the NICs; Kind is set for the uplink, Pod is left to
	// the daemon, which knows the attachments.
	Links() []api.Link
	Routes() []api.Route
	Neighbours() []api.Neighbour
	// Sockets lists the sockets of proto ("tcp", "udp", "" for both).
	Sockets(proto string) []api.Socket
	Conntrack(entries bool) *api.Conntrack
	// Counters fills st's Counters, Drops, NICs, Conntrack, Neigh and TCP.
	Counters(st *api.Stats)
	// Capture taps the NICs nics (none: all) and writes a pcap stream to
	// w until the capture's bounds, ctx or stop end it.
	Capture(ctx context.Context, stop <-chan struct{}, w io.Writer, flush func(), nics []int, req api.CaptureRequest) (capture.Stats, error)
}

var _ Inspector = (*StackAttacher)(nil)

// nicNames maps NIC IDs to names.
func (a *StackAttacher) nicNames() map[int]string {
	m := map[int]string{}
	for _, n := range a.s.Devices().List() {
		m[n.ID()] = n.Name()
	}
	return m
}

// Links lists every NIC of the stack (`ip -s -d link`).
func (a *StackAttacher) Links() []api.Link {
	a.mu.Lock()
	uplink := 0
	if a.uplink != nil {
		uplink = a.uplink.NIC
	}
	a.mu.Unlock()
	var out []api.Link
	for _, n := range a.s.Devices().List() {
		in := n.Info()
		l := api.Link{NIC: in.ID, Name: in.Name, MAC: in.MAC.String(), MTU: in.MTU, Up: in.Up,
			Offloads: dev.CapNames(in.Caps), TxQueued: in.TxQueued, TxQueue: in.TxQueueLen,
			Addresses: in.Addresses, Stats: nicStats(in.ID, in.Name, in.Stats)}
		if in.ID == uplink {
			l.Kind = api.KindUplink
		}
		if ep, ok := n.Endpoint().(*afpacket.Endpoint); ok {
			st := ep.Stats()
			l.KernelDrops = st.KernelDrops
			if a.cfg.BusyPoll > 0 {
				l.BusyPoll = &api.BusyPoll{Hits: st.BusyPollHits, Sleeps: st.BusyPollSleeps, Yields: st.BusyPollYields,
					Skips: st.BusyPollSkips, HostEvents: st.BusyPollAlso}
			}
		}
		out = append(out, l)
	}
	return out
}

func nicStats(id int, name string, s dev.Stats) api.NICStats {
	return api.NICStats{ID: id, Name: name, RxPackets: s.RxPackets, RxBytes: s.RxBytes, RxDropped: s.RxDropped,
		RxErrors: s.RxErrors, TxPackets: s.TxPackets, TxBytes: s.TxBytes, TxDropped: s.TxDropped, TxErrors: s.TxErrors,
		Drops: s.Drops}
}

// Routes lists the main table, then the local table's local and
// broadcast entries (`ip route show table all`).
func (a *StackAttacher) Routes() []api.Route {
	names := a.nicNames()
	fib := a.s.FIB()
	var out []api.Route
	for _, r := range fib.Routes() {
		scope := "global"
		if r.Connected() {
			scope = "link"
		}
		out = append(out, api.Route{Table: api.TableMain, Type: r.Type.String(), Dst: r.Dst, Gateway: r.Gateway,
			NIC: r.NIC, Dev: names[r.NIC], Src: r.Src, Metric: r.Metric, MTU: r.MTU, Scope: scope})
	}
	for _, l := range fib.Locals() {
		out = append(out, api.Route{Table: api.TableLocal, Type: route.Local.String(), Dst: netip.PrefixFrom(l.Addr, 32),
			NIC: l.NIC, Dev: names[l.NIC], Src: l.Addr, Scope: "host"})
	}
	for _, b := range fib.Broadcasts() {
		out = append(out, api.Route{Table: api.TableLocal, Type: route.Broadcast.String(), Dst: netip.PrefixFrom(b.Addr, 32),
			NIC: b.NIC, Dev: names[b.NIC], Scope: "link"})
	}
	return out
}

// Neighbours lists the neighbour table (`ip -s neigh`), by device then
// address.
func (a *StackAttacher) Neighbours() []api.Neighbour {
	names := a.nicNames()
	now := a.s.Clock().Now()
	ago := func(t time.Time) api.Duration {
		if t.IsZero() {
			return 0
		}
		return api.Duration(max(now.Sub(t), 0))
	}
	var out []api.Neighbour
	for _, e := range a.s.Neigh().Dump() {
		n := api.Neighbour{NIC: e.NIC, Dev: names[e.NIC], Addr: e.Addr, State: e.State.String(), Probes: e.Probes,
			Queued: e.Queued, ConfirmedAgo: ago(e.Confirmed), UsedAgo: ago(e.Used)}
		if e.MAC != (header.MAC{}) {
			n.MAC = e.MAC.String()
		}
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].NIC != out[j].NIC {
			return out[i].NIC < out[j].NIC
		}
		return out[i].Addr.Less(out[j].Addr)
	})
	return out
}

// Sockets lists the stack's TCP and UDP sockets (`ss -tuani`).
func (a *StackAttacher) Sockets(proto string) []api.Socket {
	var out []api.Socket
	if proto == "" || proto == "tcp" {
		for _, s := range a.s.TCP().Sockets() {
			so := api.Socket{Proto: "tcp", State: s.State.String(), Local: s.Local, Remote: s.Remote,
				RecvQ: s.RecvQ, SendQ: s.SendQ, Transparent: s.Transparent}
			if s.State != tcp.Listen {
				so.TCP = tcpInfo(s.Info)
			}
			out = append(out, so)
		}
	}
	if proto == "" || proto == "udp" {
		for _, s := range a.s.UDP().Sockets() {
			state := "UNCONN"
			if s.Connected {
				state = "ESTAB"
			}
			out = append(out, api.Socket{Proto: "udp", State: state, Local: s.Local, Remote: s.Remote, RecvQ: s.RecvQ,
				Transparent: s.Transparent, Intercept: s.Intercept, UDPDrops: s.Drops})
		}
	}
	return out
}

func tcpInfo(in tcp.Info) *api.TCPInfo {
	t := &api.TCPInfo{RTT: api.Duration(in.RTT), RTTVar: api.Duration(in.RTTVar), MinRTT: api.Duration(in.MinRTT),
		RTO: api.Duration(in.RTO), MSS: in.MSS, PeerMSS: in.PeerMSS, Cwnd: in.Cwnd, Ssthresh: in.Ssthresh,
		SndWnd: in.SndWnd, RcvWnd: in.RcvWnd, Retransmits: in.TotalRetrans, Backoff: in.Backoff,
		BytesAcked: in.BytesAcked, BytesReceived: in.BytesReceived, SegsOut: in.SegsOut, SegsIn: in.SegsIn,
		Unacked: in.Unacked, NotSent: in.NotSent, CC: in.CongestionControl, InRecovery: in.InRecovery}
	if in.Options.Timestamps {
		t.Options = append(t.Options, "ts")
	}
	if in.Options.SACK {
		t.Options = append(t.Options, "sack")
	}
	if in.Options.WindowScale {
		t.Options = append(t.Options, fmt.Sprintf("wscale:%d,%d", in.SndWscale, in.RcvWscale))
	}
	return t
}

// Conntrack reads the connection table (`conntrack -L`, `-C`, `-S`).
func (a *StackAttacher) Conntrack(entries bool) *api.Conntrack {
	ct := a.nf.Conntrack()
	s := ct.Stats()
	out := &api.Conntrack{Count: s.Entries, Max: ct.Max(), Stats: api.ConntrackStats{Found: s.Found, New: s.New,
		Invalid: s.Invalid, Insert: s.Insert, InsertFailed: s.InsertFailed, Drop: s.Drop, EarlyDrop: s.EarlyDrop,
		Expired: s.Expired, Deleted: s.Deleted}}
	if !entries {
		return out
	}
	for _, e := range ct.List() {
		ce := api.ConntrackEntry{Proto: header.ProtoName(e.Original.Proto), ProtoNum: e.Original.Proto,
			Timeout: api.Duration(max(e.Timeout, 0)), Original: ctTuple(e.Original), Reply: ctTuple(e.Reply),
			Packets: e.Packets, Bytes: e.Bytes, Status: conntrack.StatusNames(e.Status), Mark: e.Mark}
		if e.Original.Proto == header.ProtoTCP {
			ce.State = e.TCPState.String()
		}
		ce.SNAT, ce.DNAT = e.NAT()
		if e.ReplyNIC != 0 {
			ce.ReplyTo = fmt.Sprint(e.ReplyNIC)
			if n := a.s.Devices().ByID(e.ReplyNIC); n != nil {
				ce.ReplyTo = n.Name()
			}
		}
		out.Entries = append(out.Entries, ce)
	}
	return out
}

func ctTuple(t conntrack.Tuple) api.ConntrackTuple {
	return api.ConntrackTuple{Src: t.Src, Dst: t.Dst, SrcPort: t.SrcPort, DstPort: t.DstPort}
}

// Counters fills the stack's counters: every MIB counter and the
// daemon's own, the drops with their layers, the NICs, conntrack, the
// neighbour states and the TCP socket states.
func (a *StackAttacher) Counters(st *api.Stats) {
	var status api.Status
	a.Status(&status)
	st.Counters = status.Stack.Counters
	st.NICs = status.Stack.NICs
	// Every registered reason, zeros included: `stats -z` lists them all
	// and each metric series exists from the start.
	reasons := buf.DropReasons()
	st.Drops = make([]api.Drop, 0, len(reasons))
	seen := map[string]bool{}
	for _, r := range reasons {
		name := r.String()
		seen[name] = true
		st.Drops = append(st.Drops, api.Drop{Reason: name, Layer: r.Layer(), Count: status.Stack.Drops[name]})
	}
	for name, n := range status.Stack.Drops { // a reason registered twice is one name
		if !seen[name] {
			st.Drops = append(st.Drops, api.Drop{Reason: name, Layer: buf.DropLayerOf(name), Count: n})
		}
	}
	sort.Slice(st.Drops, func(i, j int) bool {
		if st.Drops[i].Layer != st.Drops[j].Layer {
			return st.Drops[i].Layer < st.Drops[j].Layer
		}
		return st.Drops[i].Reason < st.Drops[j].Reason
	})
	st.Conntrack = a.Conntrack(false)
	st.Neigh = map[string]int{}
	counts := a.s.Neigh().StateCounts()
	for _, s := range neigh.States() {
		st.Neigh[s.String()] = counts[s]
	}
	st.TCP = map[string]int{}
	tc := a.s.TCP().StateCounts()
	for _, s := range tcp.States() {
		st.TCP[s.String()] = tc[s]
	}
}

// Capture runs one capture on the stack's devices.
func (a *StackAttacher) Capture(ctx context.Context, stop <-chan struct{}, w io.Writer, flush func(), nics []int, req api.CaptureRequest) (capture.Stats, error) {
	f, err := capture.Parse(req.Filter)
	if err != nil {
		return capture.Stats{}, err
	}
	s, err := capture.Start(capture.Config{Devices: a.s.Devices(), Clock: a.s.Clock(), NICs: nics, Filter: f,
		Snaplen: req.Snaplen, MaxPackets: req.Count})
	if err != nil {
		return capture.Stats{}, err
	}
	d := req.Duration
	if d <= 0 || d > api.MaxCaptureDuration {
		d = api.MaxCaptureDuration
	}
	timer := time.AfterFunc(d, s.Stop)
	defer timer.Stop()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-stop:
			s.Stop()
		case <-done:
		}
	}()
	return s.WritePcap(ctx, w, flush)
}
