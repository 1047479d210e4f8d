package netfilter

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
)

// verdict is a target's decision inside the rule engine (the XT_CONTINUE,
// XT_RETURN, NF_ACCEPT … of ipt_do_table).
type verdict struct {
	kind   uint8
	reason buf.DropReason
}

const (
	vContinue uint8 = iota
	vAccept
	vDrop
	vStolen
	vReturn
	vJump
)

var (
	continueV = verdict{kind: vContinue}
	acceptV   = verdict{kind: vAccept}
	returnV   = verdict{kind: vReturn}
	jumpV     = verdict{kind: vJump}
)

func dropV(r buf.DropReason) verdict { return verdict{kind: vDrop, reason: r} }

// Drop reasons of the rule engine, conntrack and NAT.
var (
	DropConntrackFull = buf.NewDropReason("NF_CONNTRACK_TABLE_FULL")
	DropNATNoTuple    = buf.NewDropReason("NF_NAT_NO_FREE_TUPLE")
	DropNATNoAddress  = buf.NewDropReason("NF_NAT_NO_ADDRESS")
	DropNATMangle     = buf.NewDropReason("NF_NAT_MANGLE_FAILED")
	DropReject        = buf.NewDropReason("NETFILTER_REJECT")
	DropJumpDepth     = buf.NewDropReason("NETFILTER_JUMP_DEPTH")
)

// AcceptTarget ends evaluation with NF_ACCEPT for this table.
type AcceptTarget struct{}

func (*AcceptTarget) target(*pkt) verdict { return acceptV }
func (*AcceptTarget) String() string      { return "ACCEPT" }

// DropTarget ends evaluation and drops (DROP).
type DropTarget struct{}

func (*DropTarget) target(*pkt) verdict { return dropV(DropPolicy) }
func (*DropTarget) String() string      { return "DROP" }

// ReturnTarget goes back to the calling chain; in a built-in chain, the policy
// decides (RETURN).
type ReturnTarget struct{}

func (*ReturnTarget) target(*pkt) verdict { return returnV }
func (*ReturnTarget) String() string      { return "RETURN" }

// Jump continues in a user chain and comes back after it (-j CHAIN).
type Jump struct{ Chain string }

func (*Jump) target(*pkt) verdict { return jumpV }
func (j *Jump) String() string    { return j.Chain }

// RejectWith is the answer REJECT sends.
type RejectWith uint8

const (
	RejectPortUnreachable RejectWith = iota
	RejectHostUnreachable
	RejectNetUnreachable
	RejectProtoUnreachable
	RejectAdminProhibited
	RejectTCPReset
)

var rejectNames = [...]string{"icmp-port-unreachable", "icmp-host-unreachable", "icmp-net-unreachable",
	"icmp-proto-unreachable", "icmp-admin-prohibited", "tcp-reset"}

var rejectCodes = [...]uint8{header.ICMPv4PortUnreachable, header.ICMPv4HostUnreachable, header.ICMPv4NetUnreachable,
	header.ICMPv4ProtoUnreachable, header.ICMPv4AdminProhibited}

// rejectCodes6 are the ICMPv6 Destination Unreachable codes (RFC 4443
// §3.1) REJECT sends for an IPv6 packet (ip6t_REJECT's icmp6-port-
// unreachable, icmp6-addr-unreachable, icmp6-no-route, icmp6-adm-
// prohibited). ICMPv6 has no protocol unreachable: RFC 8200 §4 answers
// an unrecognised Next Header with Parameter Problem code 1 instead,
// which REJECT sends for icmp-proto-unreachable.
var rejectCodes6 = [...]uint8{header.ICMPv6PortUnreachable, header.ICMPv6AddrUnreachable, header.ICMPv6NoRoute,
	0, header.ICMPv6AdminProhibited}

func (w RejectWith) String() string {
	if int(w) < len(rejectNames) {
		return rejectNames[w]
	}
	return "reject?"
}

// Reject drops the packet and tells the sender (ipt_REJECT): an ICMP
// destination unreachable with the chosen code (RFC 1812 §5.2.7.1), or for
// TCP a reset (RFC 9293 §3.10.7.1: the RST a closed port would send).
type Reject struct{ With RejectWith }

func (t *Reject) String() string {
	return "REJECT --reject-with " + t.With.String()
}

func (t *Reject) target(p *pkt) verdict {
	p.nf.stats.rejects.Add(1)
	if t.With == RejectTCPReset {
		if p.proto == header.ProtoTCP && p.ct.TCP != nil {
			p.nf.sendReset(p)
		}
		return dropV(DropReject)
	}
	if p.ct.IP6 != nil {
		if s := p.nf.sender6(); s != nil {
			p.skb.SetNetworkHeader()
			if t.With == RejectProtoUnreachable {
				s.SendICMPError(p.skb, header.ICMPv6ParamProblem, header.ICMPv6UnknownNextHeader, header.IPv6NextHeaderOffset)
			} else {
				s.SendICMPError(p.skb, header.ICMPv6DstUnreachable, rejectCodes6[t.With], 0)
			}
		}
		return dropV(DropReject)
	}
	if s := p.nf.sender(); s != nil {
		p.skb.SetNetworkHeader()
		s.SendICMPError(p.skb, header.ICMPv4DstUnreachable, rejectCodes[t.With], 0)
	}
	return dropV(DropReject)
}

// Log counts the packet and writes a rate-limited structured log line,
// then evaluation continues (ipt_LOG).
type Log struct{ Prefix string }

func (t *Log) String() string {
	if t.Prefix == "" {
		return "LOG"
	}
	return "LOG --log-prefix " + quote(t.Prefix)
}

func (t *Log) target(p *pkt) verdict {
	p.nf.log(p, t.Prefix)
	return continueV
}

// Mark sets skb.Mark = (skb.Mark &^ Mask) ^ Value (MARK --set-xmark);
// evaluation continues.
type Mark struct{ Value, Mask uint32 }

func (t *Mark) String() string { return fmt.Sprintf("MARK --set-xmark %#x/%#x", t.Value, t.Mask) }

func (t *Mark) target(p *pkt) verdict {
	p.skb.Mark = (p.skb.Mark &^ t.Mask) ^ t.Value
	return continueV
}

// NATRange is the translation of SNAT and DNAT: an address range and an
// optional port range (--to-source / --to-destination a[-b][:p[-q]]).
type NATRange struct {
	Min, Max         netip.Addr
	MinPort, MaxPort uint16 // 0, 0: keep ports where possible
}

func (r NATRange) String() string {
	s := r.Min.String()
	if r.Max.IsValid() && r.Max != r.Min {
		s += "-" + r.Max.String()
	}
	if r.Min.Is6() && (r.MinPort != 0 || r.MaxPort != 0) {
		s = "[" + r.Min.String() + "]"
		if r.Max.IsValid() && r.Max != r.Min {
			s += "-[" + r.Max.String() + "]"
		}
	}
	if r.MinPort != 0 || r.MaxPort != 0 {
		s += fmt.Sprintf(":%d", r.MinPort)
		if r.MaxPort != r.MinPort {
			s += fmt.Sprintf("-%d", r.MaxPort)
		}
	}
	return s
}

func (r NATRange) ct() conntrack.Range {
	return conntrack.Range{Min: r.Min, Max: r.Max, MinPort: r.MinPort, MaxPort: r.MaxPort, Ports: r.MinPort != 0 || r.MaxPort != 0}
}

// SNAT rewrites the source of a new flow (and every later packet of it).
type SNAT struct{ To NATRange }

func (t *SNAT) String() string { return "SNAT --to-source " + t.To.String() }

func (t *SNAT) target(p *pkt) verdict { return p.bind(conntrack.ManipSrc, t.To.ct()) }

// Masquerade is SNAT to the primary address of the output link
// (ipt_MASQUERADE), optionally within a port range.
type Masquerade struct{ MinPort, MaxPort uint16 }

func (t *Masquerade) String() string {
	if t.MinPort == 0 && t.MaxPort == 0 {
		return "MASQUERADE"
	}
	return fmt.Sprintf("MASQUERADE --to-ports %d-%d", t.MinPort, t.MaxPort)
}

func (t *Masquerade) target(p *pkt) verdict {
	a, ok := p.nf.linkAddr(p.st.Out, p.dst)
	if !ok {
		return dropV(DropNATNoAddress)
	}
	return p.bind(conntrack.ManipSrc, NATRange{Min: a, Max: a, MinPort: t.MinPort, MaxPort: t.MaxPort}.ct())
}

// DNAT rewrites the destination of a new flow (port forwarding).
type DNAT struct{ To NATRange }

func (t *DNAT) String() string { return "DNAT --to-destination " + t.To.String() }

func (t *DNAT) target(p *pkt) verdict { return p.bind(conntrack.ManipDst, t.To.ct()) }

// Redirect is DNAT to the stack itself (ipt_REDIRECT): the primary address
// of the input link at PREROUTING, the packet's own (local) source at
// OUTPUT, with an optional port range.
type Redirect struct{ MinPort, MaxPort uint16 }

func (t *Redirect) String() string {
	if t.MinPort == 0 && t.MaxPort == 0 {
		return "REDIRECT"
	}
	return fmt.Sprintf("REDIRECT --to-ports %d-%d", t.MinPort, t.MaxPort)
}

func (t *Redirect) target(p *pkt) verdict {
	a := p.src
	if p.st.Hook == PreRouting {
		var ok bool
		if a, ok = p.nf.linkAddr(p.st.In, p.src); !ok {
			return dropV(DropNATNoAddress)
		}
	}
	return p.bind(conntrack.ManipDst, NATRange{Min: a, Max: a, MinPort: t.MinPort, MaxPort: t.MaxPort}.ct())
}

// MarkDivert is the skb.Mark bit DIVERT sets. The IPv4 routing input
// treats a packet carrying it as local (see the package doc), so a flow to
// any destination reaches a local socket with its destination unchanged.
const MarkDivert uint32 = 1 << 31

// Divert is the TPROXY-style verdict: the packet, and every later packet
// of its flow, is delivered locally while keeping its original
// destination. Only in mangle PREROUTING.
type Divert struct{}

func (*Divert) String() string { return "DIVERT" }

func (*Divert) target(p *pkt) verdict {
	p.skb.Mark |= MarkDivert
	if p.conn != nil {
		p.conn.Mark.Or(MarkDivert)
	}
	return acceptV
}

// bind sets up the NAT binding of a new flow (nf_nat_setup_info): only
// the first packet of a flow consults the nat table. A rule whose
// addresses are of the other family does not apply to the packet: the
// evaluation continues (one ruleset serves both families, as nft's inet
// tables do).
func (p *pkt) bind(m conntrack.Manip, r conntrack.Range) verdict {
	if p.conn == nil {
		return acceptV // untracked: nothing to translate
	}
	if r.Min.IsValid() && r.Min.Is4() != p.src.Is4() {
		return continueV
	}
	if err := p.nf.ct.BindNAT(p.conn, m, r); err != nil {
		p.nf.stats.natFailed.Add(1)
		return dropV(DropNATNoTuple)
	}
	return acceptV
}

func isBuiltinTarget(name string) bool {
	switch name {
	case "ACCEPT", "DROP", "RETURN", "REJECT", "LOG", "MARK", "SNAT", "DNAT", "MASQUERADE", "REDIRECT", "DIVERT":
		return true
	}
	return false
}

// quote writes s as the rule-file tokenizer reads it back: in double
// quotes, with " and \ escaped.
func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
