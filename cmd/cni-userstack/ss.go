package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/cni-userstack/cni-userstack/daemon/api"
	"github.com/spf13/cobra"
)

type ssFlags struct {
	tcp, udp, listening, all, process, info, numeric bool
}

func newSSCmd() *cobra.Command {
	var cf clientFlags
	var out outputFlag
	var f ssFlags
	cmd := &cobra.Command{
		Use:   "ss [-t|-u] [-l|-a] [-p] [-i] [FILTER]",
		Short: "List the stack's sockets and the proxy's relays (ss)",
		Long: `ss lists the sockets of the userspace stack as ` + "`ss -tuan`" + ` lists a kernel's:
protocol, state, receive and send queues, local and peer address. By
default connected sockets are shown (-l: listening ones only, -a: both).

-i adds TCP_INFO on a second line as ` + "`ss -ti`" + ` does (congestion control,
options, RTO, RTT/RTT variance in ms, MSS, cwnd, ssthresh, bytes and
segments each way, retransmissions).

-p shows, for proxy mode, the relay each socket belongs to: its kind
(outbound: a pod's flow to the outside; portmap: a host port's client;
dns: a DNS-over-TCP connection to the gateway), the pod, the daemon's host
socket (local->remote) and the bytes relayed each way. A pod's outbound
TCP connection is a stack socket whose local address is the destination
the pod dialled (the stack answers as that address) and whose peer is the
pod. UDP and ICMP echo flows have no socket of their own (they share the
intercept socket); -p lists them too, with state FLOW.

FILTER is a conjunction of: state STATE (ss's names: established, listen,
time-wait, ...), src ADDR[/LEN][:PORT], dst ADDR[/LEN][:PORT],
sport = :PORT, dport = :PORT. src is the local end, dst the peer, as in ss.`,
		Example: `  cni-userstack ss -t -p
  cni-userstack ss -tin state established dport = :443
  cni-userstack ss -u -a -p
  cni-userstack ss -o json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := out.validate(); err != nil {
				return err
			}
			flt, err := parseSSFilter(args)
			if err != nil {
				return usageErrorf("%v", err)
			}
			if f.listening && f.all {
				return usageErrorf("-l and -a: pick one")
			}
			proto := ""
			switch {
			case f.tcp && !f.udp:
				proto = "tcp"
			case f.udp && !f.tcp:
				proto = "udp"
			}
			return cf.call(func(ctx context.Context, c *api.Client) error {
				s, err := c.Sockets(ctx, proto)
				if err != nil {
					return err
				}
				s = selectSockets(s, f, flt)
				if done, err := out.structured(cmd.OutOrStdout(), s); done {
					return err
				}
				return printSockets(cmd.OutOrStdout(), s, f)
			})
		},
	}
	cf.add(cmd)
	out.add(cmd, "json", "yaml")
	fl := cmd.Flags()
	fl.BoolVarP(&f.tcp, "tcp", "t", false, "TCP sockets")
	fl.BoolVarP(&f.udp, "udp", "u", false, "UDP sockets")
	fl.BoolVarP(&f.listening, "listening", "l", false, "listening (and unconnected UDP) sockets only")
	fl.BoolVarP(&f.all, "all", "a", false, "listening and connected sockets")
	fl.BoolVarP(&f.process, "processes", "p", false, "the relay each socket belongs to (proxy mode), and the flows without a socket")
	fl.BoolVarP(&f.info, "info", "i", false, "TCP_INFO of each TCP connection")
	fl.BoolVarP(&f.numeric, "numeric", "n", false, "accepted for ss's sake: addresses are always numeric")
	return cmd
}

// ssFilter is the conjunction of an ss filter's terms.
type ssFilter struct {
	states       map[string]bool
	src, dst     []netip.Prefix
	srcP, dstP   []uint16
	sport, dport []uint16
}

// ssStates maps ss's state names (lowercase, as the filter takes them)
// to how the daemon names them.
var ssStates = map[string]string{
	"established": "ESTABLISHED", "syn-sent": "SYN-SENT", "syn-recv": "SYN-RECEIVED", "fin-wait-1": "FIN-WAIT-1",
	"fin-wait-2": "FIN-WAIT-2", "time-wait": "TIME-WAIT", "closed": "CLOSED", "close-wait": "CLOSE-WAIT",
	"last-ack": "LAST-ACK", "listen": "LISTEN", "closing": "CLOSING", "unconn": "UNCONN", "estab": "ESTABLISHED",
}

// ssName is ss's column text for a state.
func ssName(state string) string {
	switch state {
	case "ESTABLISHED":
		return "ESTAB"
	case "SYN-RECEIVED":
		return "SYN-RECV"
	}
	return state
}

func parseSSFilter(args []string) (*ssFilter, error) {
	f := &ssFilter{}
	// "dport = :80" may arrive as one argument or three.
	toks := strings.Fields(strings.Join(args, " "))
	for i := 0; i < len(toks); i++ {
		t := strings.ToLower(toks[i])
		next := func() (string, error) {
			i++
			if i >= len(toks) {
				return "", fmt.Errorf("filter: %q wants a value", t)
			}
			return toks[i], nil
		}
		switch t {
		case "and", "&&":
		case "state":
			v, err := next()
			if err != nil {
				return nil, err
			}
			s, ok := ssStates[strings.ToLower(v)]
			if !ok {
				return nil, fmt.Errorf("filter: unknown state %q", v)
			}
			if f.states == nil {
				f.states = map[string]bool{}
			}
			f.states[s] = true
		case "src", "dst":
			v, err := next()
			if err != nil {
				return nil, err
			}
			p, port, err := parseEndpoint(v)
			if err != nil {
				return nil, err
			}
			if t == "src" {
				f.src, f.srcP = append(f.src, p), append(f.srcP, port)
			} else {
				f.dst, f.dstP = append(f.dst, p), append(f.dstP, port)
			}
		case "sport", "dport":
			v, err := next()
			if err != nil {
				return nil, err
			}
			if v == "=" || v == "==" || v == "eq" {
				if v, err = next(); err != nil {
					return nil, err
				}
			}
			n, err := strconv.ParseUint(strings.TrimPrefix(v, ":"), 10, 16)
			if err != nil {
				return nil, fmt.Errorf("filter: %s %q: want :PORT", t, v)
			}
			if t == "sport" {
				f.sport = append(f.sport, uint16(n))
			} else {
				f.dport = append(f.dport, uint16(n))
			}
		default:
			return nil, fmt.Errorf("filter: unknown term %q (want state, src, dst, sport, dport)", toks[i])
		}
	}
	return f, nil
}

// parseEndpoint reads ADDR, ADDR/LEN, ADDR:PORT or ADDR/LEN:PORT (port 0:
// any).
func parseEndpoint(s string) (netip.Prefix, uint16, error) {
	var port uint16
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		n, err := strconv.ParseUint(s[i+1:], 10, 16)
		if err != nil {
			return netip.Prefix{}, 0, fmt.Errorf("filter: %q: bad port", s)
		}
		port, s = uint16(n), s[:i]
	}
	if !strings.Contains(s, "/") {
		s += "/32"
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return netip.Prefix{}, 0, fmt.Errorf("filter: %q: want an IPv4 address or prefix", s)
	}
	return p.Masked(), port, nil
}

func (f *ssFilter) endpointOK(ap netip.AddrPort, ps []netip.Prefix, ports []uint16) bool {
	if len(ps) == 0 {
		return true
	}
	for i, p := range ps {
		if p.Contains(ap.Addr()) && (ports[i] == 0 || ports[i] == ap.Port()) {
			return true
		}
	}
	return false
}

func portIn(p uint16, ps []uint16) bool {
	if len(ps) == 0 {
		return true
	}
	for _, x := range ps {
		if x == p {
			return true
		}
	}
	return false
}

func (f *ssFilter) match(state string, local, remote netip.AddrPort) bool {
	if state == "ESTAB" { // a connected UDP socket
		state = "ESTABLISHED"
	}
	if f.states != nil && !f.states[state] {
		return false
	}
	return f.endpointOK(local, f.src, f.srcP) && f.endpointOK(remote, f.dst, f.dstP) &&
		portIn(local.Port(), f.sport) && portIn(remote.Port(), f.dport)
}

// listening reports the sockets -l shows: TCP listeners and unconnected
// UDP sockets.
func listening(s api.Socket) bool { return s.State == "LISTEN" || s.State == "UNCONN" }

func selectSockets(s *api.Sockets, f ssFlags, flt *ssFilter) *api.Sockets {
	out := &api.Sockets{}
	for _, so := range s.Sockets {
		switch {
		case f.listening && !listening(so), !f.listening && !f.all && listening(so):
			continue
		case !flt.match(so.State, so.Local, so.Remote):
			continue
		}
		if !f.process {
			so.Relay = nil
		}
		out.Sockets = append(out.Sockets, so)
	}
	if f.process && !f.listening {
		for _, r := range s.Relays {
			if (r.Proto == "icmp" && (f.tcp || f.udp)) || !flt.match("ESTABLISHED", r.PodLocal, r.PodRemote) {
				continue
			}
			out.Relays = append(out.Relays, r)
		}
	}
	return out
}

// relayColumn is the Process column of a relay, in ss's users:(...)
// spirit.
func relayColumn(r *api.Relay) string {
	if r == nil {
		return ""
	}
	pod := r.PodName
	if pod == "" {
		pod = r.Pod
	}
	if pod == "" {
		pod = r.PodRemote.Addr().String()
	}
	return fmt.Sprintf("relay:(%s,pod=%s,host=%s->%s,from_pod=%d,to_pod=%d)", r.Kind, pod,
		addrPort(r.HostLocal), addrPort(r.HostRemote), r.FromPod, r.ToPod)
}

func ms(d api.Duration) string {
	return strconv.FormatFloat(float64(time.Duration(d))/float64(time.Millisecond), 'f', -1, 64)
}

// tcpInfoLine is `ss -ti`'s second line.
func tcpInfoLine(t *api.TCPInfo) string {
	var b strings.Builder
	b.WriteString("\t")
	if t.CC != "" {
		b.WriteString(" " + t.CC)
	}
	for _, o := range t.Options {
		b.WriteString(" " + o)
	}
	fmt.Fprintf(&b, " rto:%s rtt:%s/%s", ms(t.RTO), ms(t.RTT), ms(t.RTTVar))
	if t.MinRTT != 0 {
		fmt.Fprintf(&b, " minrtt:%s", ms(t.MinRTT))
	}
	fmt.Fprintf(&b, " mss:%d", t.MSS)
	if t.PeerMSS != 0 {
		fmt.Fprintf(&b, " pmtu_mss:%d", t.PeerMSS)
	}
	fmt.Fprintf(&b, " cwnd:%d", t.Cwnd)
	if t.Ssthresh < 1<<30 {
		fmt.Fprintf(&b, " ssthresh:%d", t.Ssthresh)
	}
	fmt.Fprintf(&b, " bytes_acked:%d bytes_received:%d segs_out:%d segs_in:%d snd_wnd:%d rcv_wnd:%d",
		t.BytesAcked, t.BytesReceived, t.SegsOut, t.SegsIn, t.SndWnd, t.RcvWnd)
	if t.Unacked != 0 {
		fmt.Fprintf(&b, " unacked:%d", t.Unacked)
	}
	if t.NotSent != 0 {
		fmt.Fprintf(&b, " notsent:%d", t.NotSent)
	}
	fmt.Fprintf(&b, " retrans:%d/%d", t.Backoff, t.Retransmits)
	if t.InRecovery {
		b.WriteString(" recovery")
	}
	return b.String()
}

func printSockets(w io.Writer, s *api.Sockets, f ssFlags) error {
	h := []string{"Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port"}
	if f.process {
		h = append(h, "Process")
	}
	t := newTable(w, h...)
	for _, so := range s.Sockets {
		row := []string{so.Proto, ssName(so.State), itoa(so.RecvQ), itoa(so.SendQ), addrPort(so.Local), addrPort(so.Remote)}
		if f.process {
			p := relayColumn(so.Relay)
			if so.Intercept {
				p = "intercept:(proxy)"
			}
			row = append(row, p)
		}
		t.row(row...)
		if f.info && so.TCP != nil {
			t.line(tcpInfoLine(so.TCP))
		}
	}
	for i := range s.Relays {
		r := &s.Relays[i]
		row := []string{r.Proto, "FLOW", "0", "0", addrPort(r.PodLocal), addrPort(r.PodRemote)}
		if f.process {
			row = append(row, relayColumn(r))
		}
		t.row(row...)
	}
	return t.flush()
}
