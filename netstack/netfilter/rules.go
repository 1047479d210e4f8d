package netfilter

import (
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"

	"github.com/cni-userstack/cni-userstack/netstack/header"
	"github.com/cni-userstack/cni-userstack/netstack/netfilter/conntrack"
)

// Match is one condition of a rule (struct xt_match). The implementations
// are the types below; String prints the rule-file syntax.
type Match interface {
	match(p *pkt) bool
	String() string
}

// Target is what a matching rule does (struct xt_target).
type Target interface {
	target(p *pkt) verdict
	String() string
}

// LinkMatch matches the input (-i) or output (-o) link by name; a name
// ending in '+' matches every link with that prefix (iptables' "eth+").
type LinkMatch struct {
	Out  bool
	Name string
}

func (m LinkMatch) match(p *pkt) bool {
	name := p.linkName(m.Out)
	if strings.HasSuffix(m.Name, "+") {
		return strings.HasPrefix(name, m.Name[:len(m.Name)-1]) && name != ""
	}
	return name == m.Name
}

func (m LinkMatch) String() string {
	if m.Out {
		return "-o " + m.Name
	}
	return "-i " + m.Name
}

// AddrMatch matches the source (-s) or destination (-d) address.
type AddrMatch struct {
	Dst    bool
	Prefix netip.Prefix
}

func (m AddrMatch) match(p *pkt) bool {
	if m.Dst {
		return m.Prefix.Contains(p.dst)
	}
	return m.Prefix.Contains(p.src)
}

// applies reports whether the match speaks of p's family: a prefix of
// the other family neither matches nor, negated, matches (nft's inet
// "ip saddr" on an IPv6 packet), so one ruleset serves both families.
func (m AddrMatch) applies(p *pkt) bool { return m.Prefix.Addr().Is4() == p.src.Is4() }

func (m AddrMatch) String() string {
	if m.Dst {
		return "-d " + m.Prefix.String()
	}
	return "-s " + m.Prefix.String()
}

// ProtoMatch matches the IP protocol (-p).
type ProtoMatch struct{ Proto uint8 }

func (m ProtoMatch) match(p *pkt) bool { return p.proto == m.Proto }
func (m ProtoMatch) String() string    { return "-p " + header.ProtoName(m.Proto) }

// PortMatch matches a TCP or UDP source (--sport) or destination
// (--dport) port in [Min, Max]. Packets without ports never match.
type PortMatch struct {
	Dst      bool
	Min, Max uint16
}

func (m PortMatch) match(p *pkt) bool {
	if !p.ports {
		return false
	}
	v := p.sport
	if m.Dst {
		v = p.dport
	}
	return v >= m.Min && v <= m.Max
}

func (m PortMatch) String() string {
	opt := "--sport "
	if m.Dst {
		opt = "--dport "
	}
	if m.Min == m.Max {
		return opt + fmt.Sprint(m.Min)
	}
	return fmt.Sprintf("%s%d:%d", opt, m.Min, m.Max)
}

// ICMPTypeMatch matches an ICMP type and, unless AnyCode, code
// (--icmp-type), or with V6 an ICMPv6 type and code (--icmpv6-type).
type ICMPTypeMatch struct {
	Type, Code uint8
	AnyCode    bool
	V6         bool
}

func (m ICMPTypeMatch) match(p *pkt) bool {
	var typ, code uint8
	switch {
	case m.V6 && p.proto == header.ProtoICMPv6 && p.ct.ICMP6 != nil:
		typ, code = p.ct.ICMP6.Type(), p.ct.ICMP6.Code()
	case !m.V6 && p.proto == header.ProtoICMP && p.ct.ICMP != nil:
		typ, code = p.ct.ICMP.Type(), p.ct.ICMP.Code()
	default:
		return false
	}
	return typ == m.Type && (m.AnyCode || code == m.Code)
}

func (m ICMPTypeMatch) String() string {
	opt := "--icmp-type"
	if m.V6 {
		opt = "--icmpv6-type"
	}
	if m.AnyCode {
		return fmt.Sprintf("%s %d", opt, m.Type)
	}
	return fmt.Sprintf("%s %d/%d", opt, m.Type, m.Code)
}

// TCPFlagsMatch matches TCP segments whose flags under Mask equal Set
// (--tcp-flags MASK SET; --syn is SYN,RST,ACK,FIN SYN).
type TCPFlagsMatch struct{ Mask, Set header.TCPFlags }

func (m TCPFlagsMatch) match(p *pkt) bool {
	t := p.ct.TCP
	return t != nil && t.Flags()&m.Mask == m.Set
}

func (m TCPFlagsMatch) String() string {
	return "--tcp-flags " + flagList(m.Mask) + " " + flagList(m.Set)
}

func flagList(f header.TCPFlags) string {
	if f == 0 {
		return "NONE"
	}
	var out []string
	for i, n := range tcpFlagNames {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}

var tcpFlagNames = [...]string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}

// CtState is a set of conntrack states (--ctstate).
type CtState uint8

const (
	CtNew CtState = 1 << iota
	CtEstablished
	CtRelated
	CtInvalid
	CtUntracked
)

var ctStateNames = [...]string{"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED"}

func (s CtState) String() string {
	var out []string
	for i, n := range ctStateNames {
		if s&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}

// CtStateMatch matches the packet's conntrack state (-m conntrack --ctstate).
type CtStateMatch struct{ States CtState }

func (m CtStateMatch) match(p *pkt) bool { return p.ctState()&m.States != 0 }
func (m CtStateMatch) String() string    { return "--ctstate " + m.States.String() }

// MarkMatch matches skb.Mark&Mask == Value (-m mark --mark VALUE/MASK).
type MarkMatch struct{ Value, Mask uint32 }

func (m MarkMatch) match(p *pkt) bool { return p.skb.Mark&m.Mask == m.Value }
func (m MarkMatch) String() string    { return fmt.Sprintf("--mark %#x/%#x", m.Value, m.Mask) }

// LengthMatch matches the IP total length in [Min, Max] (-m length --length).
type LengthMatch struct{ Min, Max int }

func (m LengthMatch) match(p *pkt) bool { return p.length >= m.Min && p.length <= m.Max }
func (m LengthMatch) String() string    { return fmt.Sprintf("--length %d:%d", m.Min, m.Max) }

// Not negates a match ("!").
type Not struct{ M Match }

func (m Not) match(p *pkt) bool {
	if a, ok := m.M.(interface{ applies(*pkt) bool }); ok && !a.applies(p) {
		return false
	}
	return !m.M.match(p)
}
func (m Not) String() string { return "! " + m.M.String() }

// Rule is one entry of a chain (struct ipt_entry): every match must hold
// for the target to run. Its counters count the packets that matched.
type Rule struct {
	Matches []Match
	Target  Target
	// Line is the rule file line it came from, 0 for the Go API.
	Line int
	col  int // column of the target, for errors

	packets, bytes atomic.Uint64
}

// Counters returns the packets and bytes that matched the rule.
func (r *Rule) Counters() (packets, bytes uint64) { return r.packets.Load(), r.bytes.Load() }

func (r *Rule) String() string {
	var b strings.Builder
	for _, m := range r.Matches {
		b.WriteString(m.String())
		b.WriteByte(' ')
	}
	if r.Target != nil {
		b.WriteString("-j ")
		b.WriteString(r.Target.String())
	}
	return strings.TrimSpace(b.String())
}

// ctInfoState maps conntrack's Info to the ctstate bit.
func ctInfoState(i conntrack.Info) CtState {
	switch i {
	case conntrack.InfoNew:
		return CtNew
	case conntrack.InfoEstablished:
		return CtEstablished
	case conntrack.InfoRelated:
		return CtRelated
	case conntrack.InfoUntracked:
		return CtUntracked
	}
	return CtInvalid
}
