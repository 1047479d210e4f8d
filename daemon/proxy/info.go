package proxy

import (
	"net"
	"net/netip"
	"sort"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
	"github.com/cni-userstack/cni-userstack/netstack/tcp"
)

// Read-only list of the engine's flows for `cni-userstack ss -p`: each
// flow's pod side in the stack and its host socket, and the bytes each
// way. TCP relays register their two sockets on their flowHandle once both
// are up (setRelay: one small allocation and one atomic store per flow,
// nothing per packet); UDP and echo flows are read from their tables.
// Bytes come from counters that exist anyway: a TCP relay's stack socket
// (TCP_INFO), conntrack's per-direction counters for UDP and echo.

// Relay kinds.
const (
	RelayOutbound = "outbound"
	RelayPortMap  = "portmap"
	RelayDNS      = "dns"
)

// Relay is one flow of the engine.
type Relay struct {
	Kind  string // RelayOutbound, RelayPortMap, RelayDNS
	Proto string // "tcp", "udp", "icmp"
	// PodAddr is the pod's address and PodID its ID when it is a
	// registered pod.
	PodAddr netip.Addr
	PodID   string
	// PodLocal and PodRemote are the stack side: the address the pod
	// talks to and the pod (ICMP: the identifier in the ports).
	PodLocal, PodRemote netip.AddrPort
	// HostLocal and HostRemote are the daemon's host socket.
	HostLocal, HostRemote netip.AddrPort
	// FromPod and ToPod are bytes each way (TCP payload; UDP and ICMP:
	// IP bytes conntrack counted on the pod side, 0 without conntrack).
	FromPod, ToPod uint64
}

// relayEnds are a TCP relay's two sockets.
type relayEnds struct {
	kind  string
	stack net.Conn // the pod side: a *tcp.Conn of the stack
	host  endpoints
}

// endpoints is what the list reads of a host socket: a net.Conn, or the
// engine's own hostFD (tcpSYN's connects).
type endpoints interface {
	LocalAddr() net.Addr
	RemoteAddr() net.Addr
}

// tcpInfoer is the stack side's TCP_INFO (*tcp.Conn).
type tcpInfoer interface{ Info() tcp.Info }

// setRelay records the sockets of f's TCP relay for Relays, once (a
// relay's two sockets are up once), in f itself: nothing allocated. The
// atomic store publishes what was written before it.
func (f *flowHandle) setRelay(kind string, stack net.Conn, host endpoints) {
	f.ends = relayEnds{kind: kind, stack: stack, host: host}
	f.relay.Store(&f.ends)
}

// Relays lists every flow that is relaying now (TCP flows still
// connecting are left out), sorted by kind, protocol and pod side.
func (e *Engine) Relays() []Relay {
	var ct *conntrack.Table
	if nf := e.st.Netfilter(); nf != nil {
		ct = nf.Conntrack()
	}
	e.mu.Lock()
	podIDs := make(map[netip.Addr]string, len(e.pods))
	pods := make([]*pod, 0, len(e.pods))
	for id, p := range e.pods {
		podIDs[p.Addr] = id
		pods = append(pods, p)
	}
	var tcps []*relayEnds
	for _, st := range e.addrs {
		for f := range st.flows {
			if r := f.relay.Load(); r != nil {
				tcps = append(tcps, r)
			}
		}
	}
	e.mu.Unlock()

	var out []Relay
	for _, r := range tcps {
		rl := Relay{Kind: r.kind, Proto: "tcp", PodLocal: addrPort(r.stack.LocalAddr()), PodRemote: addrPort(r.stack.RemoteAddr()),
			HostLocal: addrPort(r.host.LocalAddr()), HostRemote: addrPort(r.host.RemoteAddr())}
		if ti, ok := r.stack.(tcpInfoer); ok {
			in := ti.Info()
			rl.FromPod, rl.ToPod = in.BytesReceived, in.BytesAcked
		}
		// The pod is the stack socket's peer whichever side opened it.
		rl.PodAddr = rl.PodRemote.Addr()
		out = append(out, rl)
	}

	e.udp.mu.Lock()
	for _, u := range e.udp.m {
		rl := Relay{Kind: RelayOutbound, Proto: "udp", PodAddr: u.key.pod.Addr(), PodLocal: u.key.dst, PodRemote: u.key.pod}
		if u.h != nil {
			rl.HostLocal, rl.HostRemote = addrPort(u.h.LocalAddr()), addrPort(u.h.RemoteAddr())
		} else {
			rl.HostLocal, rl.HostRemote = addrPort(u.conn.LocalAddr()), addrPort(u.conn.RemoteAddr())
		}
		rl.FromPod, rl.ToPod = ctBytes(ct, conntrack.Tuple{Src: u.key.pod.Addr(), Dst: u.key.dst.Addr(),
			SrcPort: u.key.pod.Port(), DstPort: u.key.dst.Port(), Proto: header.ProtoUDP}, false)
		out = append(out, rl)
	}
	e.udp.mu.Unlock()

	e.echo.mu.Lock()
	for _, ef := range e.echo.m {
		rl := Relay{Kind: RelayOutbound, Proto: "icmp", PodAddr: ef.key.pod,
			PodLocal: netip.AddrPortFrom(ef.key.dst, ef.key.id), PodRemote: netip.AddrPortFrom(ef.key.pod, ef.key.id)}
		if ef.viaRaw {
			// The shared raw ICMP socket: the identifier this flow
			// uses on it, towards the address pinged.
			rl.HostLocal = netip.AddrPortFrom(netip.IPv4Unspecified(), ef.hostID)
			rl.HostRemote = netip.AddrPortFrom(ef.rawKey.dst, ef.hostID)
		} else if ef.h != nil {
			rl.HostLocal, rl.HostRemote = addrPort(ef.h.LocalAddr()), addrPort(ef.h.RemoteAddr())
		}
		rl.FromPod, rl.ToPod = ctBytes(ct, conntrack.Tuple{Src: ef.key.pod, Dst: ef.key.dst, SrcPort: ef.key.id,
			Proto: header.ProtoICMP}, false)
		out = append(out, rl)
	}
	e.echo.mu.Unlock()

	for _, p := range pods {
		for _, u := range p.udp {
			host := addrPort(u.ln.LocalAddr())
			u.mu.Lock()
			for client, pf := range u.flows {
				rl := Relay{Kind: RelayPortMap, Proto: "udp", PodAddr: p.Addr, PodLocal: pf.sock.LocalAddr(),
					PodRemote: pf.sock.RemoteAddr(), HostLocal: host, HostRemote: client}
				// The stack opened this flow towards the pod: the
				// original direction is the one into the pod.
				rl.FromPod, rl.ToPod = ctBytes(ct, conntrack.Tuple{Src: rl.PodLocal.Addr(), Dst: rl.PodRemote.Addr(),
					SrcPort: rl.PodLocal.Port(), DstPort: rl.PodRemote.Port(), Proto: header.ProtoUDP}, true)
				out = append(out, rl)
			}
			u.mu.Unlock()
		}
	}

	for i := range out {
		out[i].PodID = podIDs[out[i].PodAddr]
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Proto != b.Proto {
			return a.Proto < b.Proto
		}
		if c := a.PodRemote.Compare(b.PodRemote); c != 0 {
			return c < 0
		}
		return a.PodLocal.Compare(b.PodLocal) < 0
	})
	return out
}

// ctBytes reads a flow's conntrack byte counters: original is the pod's
// direction unless intoPod says the flow was opened towards the pod.
func ctBytes(ct *conntrack.Table, orig conntrack.Tuple, intoPod bool) (fromPod, toPod uint64) {
	if ct == nil {
		return 0, 0
	}
	c, dir, ok := ct.Lookup(orig)
	if !ok {
		return 0, 0
	}
	_, o := c.Counters(dir)
	_, r := c.Counters(1 - dir)
	if intoPod {
		return r, o
	}
	return o, r
}

// addrPort converts a socket address of the standard library.
func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	case *net.IPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return netip.AddrPortFrom(ip.Unmap(), 0)
	}
	return netip.AddrPort{}
}
