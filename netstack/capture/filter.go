package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// Filter is a compiled capture filter (see the package doc for the
// language). The zero value and nil match every frame. A Filter is
// immutable and safe for concurrent use.
type Filter struct {
	root node
	src  string // canonical text (String)
}

// MaxFilterLen bounds the text of a filter; MaxFilterDepth the nesting of
// parentheses and "not"s. A filter past either is refused, so a hostile
// expression cannot make the daemon recurse without bound.
const (
	MaxFilterLen   = 4096
	MaxFilterDepth = 64
)

// ErrFilter is wrapped by every parse error.
var ErrFilter = errors.New("capture filter")

// Parse compiles a filter expression; "" (or only spaces) is nil, which
// matches everything.
func Parse(expr string) (*Filter, error) {
	if len(expr) > MaxFilterLen {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrFilter, len(expr), MaxFilterLen)
	}
	toks, err := tokenize(expr)
	if err != nil {
		return nil, err
	}
	if len(toks) == 0 {
		return nil, nil
	}
	p := &parser{toks: toks}
	n, err := p.or(0)
	if err != nil {
		return nil, err
	}
	if !p.done() {
		return nil, p.errorf("unexpected %q", p.peek())
	}
	return &Filter{root: n, src: n.String()}, nil
}

// String is the filter in canonical form: Parse(f.String()) compiles to
// the same filter. A nil Filter is "".
func (f *Filter) String() string {
	if f == nil {
		return ""
	}
	return f.src
}

// Match reports whether frame (from its Ethernet header), travelling in
// direction dir, passes the filter. It allocates nothing and never panics
// whatever the bytes.
func (f *Filter) Match(frame []byte, dir Direction) bool {
	if f == nil || f.root == nil {
		return true
	}
	var p packet
	p.parse(frame, dir)
	return f.root.match(&p)
}

// Direction is a frame's direction as the NIC sees it.
type Direction uint8

const (
	Inbound  Direction = iota // received on the NIC
	Outbound                  // sent by the NIC
)

func (d Direction) String() string {
	if d == Inbound {
		return "in"
	}
	return "out"
}

// packet is what matching needs of a frame, parsed once.
type packet struct {
	dir      Direction
	length   int
	eth      bool // an Ethernet header is there
	src, dst header.MAC
	etype    header.EtherType
	// IPv4 (ip) or ARP (arp) addresses.
	ip, arp      bool
	sip, dip     netip.Addr
	proto        uint8
	ports        bool // TCP or UDP and the first fragment holds the ports
	sport, dport uint16
}

func (p *packet) parse(b []byte, dir Direction) {
	p.dir, p.length = dir, len(b)
	if len(b) < header.EthernetMinSize {
		return
	}
	p.eth = true
	copy(p.dst[:], b[0:6])
	copy(p.src[:], b[6:12])
	p.etype = header.EtherType(binary.BigEndian.Uint16(b[12:14]))
	l3 := b[header.EthernetMinSize:]
	switch p.etype {
	case header.EtherTypeIPv4:
		if len(l3) < header.IPv4MinSize || l3[0]>>4 != 4 {
			return
		}
		hl := int(l3[0]&0xf) * 4
		if hl < header.IPv4MinSize || hl > len(l3) {
			return
		}
		p.ip = true
		p.proto = l3[9]
		p.sip = netip.AddrFrom4([4]byte(l3[12:16]))
		p.dip = netip.AddrFrom4([4]byte(l3[16:20]))
		fragOff := binary.BigEndian.Uint16(l3[6:8]) & 0x1fff
		l4 := l3[hl:]
		if fragOff == 0 && (p.proto == header.ProtoTCP || p.proto == header.ProtoUDP) && len(l4) >= 4 {
			p.ports = true
			p.sport = binary.BigEndian.Uint16(l4[0:2])
			p.dport = binary.BigEndian.Uint16(l4[2:4])
		}
	case header.EtherTypeARP:
		a, err := header.CheckARP(l3)
		if err != nil {
			return
		}
		p.arp = true
		p.sip, p.dip = a.SenderIP(), a.TargetIP()
	}
}

// dirQual is a primitive's src/dst qualifier.
type dirQual uint8

const (
	either dirQual = iota
	srcOnly
	dstOnly
)

func (q dirQual) prefix() string {
	switch q {
	case srcOnly:
		return "src "
	case dstOnly:
		return "dst "
	}
	return ""
}

// node is one operator or primitive of a compiled filter.
type node interface {
	match(p *packet) bool
	String() string
}

type orNode struct{ a, b node }
type andNode struct{ a, b node }
type notNode struct{ a node }

func (n orNode) match(p *packet) bool  { return n.a.match(p) || n.b.match(p) }
func (n andNode) match(p *packet) bool { return n.a.match(p) && n.b.match(p) }
func (n notNode) match(p *packet) bool { return !n.a.match(p) }
func (n orNode) String() string        { return "(" + n.a.String() + " or " + n.b.String() + ")" }
func (n andNode) String() string       { return "(" + n.a.String() + " and " + n.b.String() + ")" }
func (n notNode) String() string       { return "not " + n.a.String() }

// netNode is "host ADDR" (a /32) or "net PREFIX": IPv4 source or
// destination, or an ARP sender or target address.
type netNode struct {
	q    dirQual
	p    netip.Prefix
	host bool
}

func (n netNode) match(p *packet) bool {
	if !p.ip && !p.arp {
		return false
	}
	switch n.q {
	case srcOnly:
		return n.p.Contains(p.sip)
	case dstOnly:
		return n.p.Contains(p.dip)
	}
	return n.p.Contains(p.sip) || n.p.Contains(p.dip)
}

func (n netNode) String() string {
	if n.host {
		return n.q.prefix() + "host " + n.p.Addr().String()
	}
	return n.q.prefix() + "net " + n.p.String()
}

// portNode is "port N" or "portrange N-M" on TCP or UDP, optionally
// restricted to one of them ("tcp port 80").
type portNode struct {
	q      dirQual
	lo, hi uint16
	proto  uint8 // 0: TCP or UDP
	rng    bool
}

func (n portNode) match(p *packet) bool {
	if !p.ports || (n.proto != 0 && p.proto != n.proto) {
		return false
	}
	in := func(v uint16) bool { return v >= n.lo && v <= n.hi }
	switch n.q {
	case srcOnly:
		return in(p.sport)
	case dstOnly:
		return in(p.dport)
	}
	return in(p.sport) || in(p.dport)
}

func (n portNode) String() string {
	s := ""
	if n.proto != 0 {
		s = protoName(n.proto) + " "
	}
	s += n.q.prefix()
	if n.rng {
		return s + fmt.Sprintf("portrange %d-%d", n.lo, n.hi)
	}
	return s + fmt.Sprintf("port %d", n.lo)
}

// protoNode is "ip proto N" (and the names tcp, udp, icmp).
type protoNode struct{ proto uint8 }

func (n protoNode) match(p *packet) bool { return p.ip && p.proto == n.proto }
func (n protoNode) String() string {
	if name := protoName(n.proto); name != "" {
		return name
	}
	return fmt.Sprintf("ip proto %d", n.proto)
}

// etherTypeNode is "ip", "arp" or "ether proto N".
type etherTypeNode struct{ t header.EtherType }

func (n etherTypeNode) match(p *packet) bool { return p.eth && p.etype == n.t }
func (n etherTypeNode) String() string {
	switch n.t {
	case header.EtherTypeIPv4:
		return "ip"
	case header.EtherTypeARP:
		return "arp"
	}
	return fmt.Sprintf("ether proto 0x%04x", uint16(n.t))
}

// etherHostNode is "ether [src|dst] host MAC".
type etherHostNode struct {
	q   dirQual
	mac header.MAC
}

func (n etherHostNode) match(p *packet) bool {
	if !p.eth {
		return false
	}
	switch n.q {
	case srcOnly:
		return p.src == n.mac
	case dstOnly:
		return p.dst == n.mac
	}
	return p.src == n.mac || p.dst == n.mac
}

func (n etherHostNode) String() string { return "ether " + n.q.prefix() + "host " + n.mac.String() }

// dirNode is "inbound" or "outbound".
type dirNode struct{ d Direction }

func (n dirNode) match(p *packet) bool { return p.dir == n.d }
func (n dirNode) String() string {
	if n.d == Inbound {
		return "inbound"
	}
	return "outbound"
}

// lenNode is "len OP N", "less N" (len <= N) and "greater N" (len >= N):
// the frame's length on the wire.
type lenNode struct {
	op string
	n  int
}

func (n lenNode) match(p *packet) bool {
	switch n.op {
	case "<":
		return p.length < n.n
	case "<=":
		return p.length <= n.n
	case ">":
		return p.length > n.n
	case ">=":
		return p.length >= n.n
	case "=":
		return p.length == n.n
	case "!=":
		return p.length != n.n
	}
	return false
}

func (n lenNode) String() string { return fmt.Sprintf("len %s %d", n.op, n.n) }

var protoNames = map[string]uint8{"tcp": header.ProtoTCP, "udp": header.ProtoUDP, "icmp": header.ProtoICMP}

func protoName(p uint8) string {
	for k, v := range protoNames {
		if v == p {
			return k
		}
	}
	return ""
}

// tokenize splits expr into words, parentheses and the operators "!",
// "&&", "||" and the comparisons of "len".
func tokenize(expr string) ([]string, error) {
	var toks []string
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '(' || c == ')':
			toks = append(toks, string(c))
			i++
		case strings.HasPrefix(expr[i:], "&&") || strings.HasPrefix(expr[i:], "||") ||
			strings.HasPrefix(expr[i:], "<=") || strings.HasPrefix(expr[i:], ">=") || strings.HasPrefix(expr[i:], "!="):
			toks = append(toks, expr[i:i+2])
			i += 2
		case c == '!' || c == '<' || c == '>' || c == '=':
			toks = append(toks, string(c))
			i++
		case c > ' ' && c < 0x7f:
			j := i
			for j < len(expr) && expr[j] > ' ' && expr[j] < 0x7f && !strings.ContainsRune("()!&|<>=", rune(expr[j])) {
				j++
			}
			if j == i { // a lone '&' or '|'
				return nil, fmt.Errorf("%w: unexpected %q at offset %d (use \"and\"/\"&&\", \"or\"/\"||\")", ErrFilter, c, i)
			}
			toks = append(toks, expr[i:j])
			i = j
		default:
			return nil, fmt.Errorf("%w: unexpected byte %q at offset %d", ErrFilter, c, i)
		}
	}
	return toks, nil
}

type parser struct {
	toks []string
	i    int
}

func (p *parser) done() bool { return p.i >= len(p.toks) }

func (p *parser) peek() string {
	if p.done() {
		return ""
	}
	return p.toks[p.i]
}

func (p *parser) next() string {
	t := p.peek()
	if !p.done() {
		p.i++
	}
	return t
}

func (p *parser) errorf(format string, a ...any) error {
	return fmt.Errorf("%w: %s (word %d of %q)", ErrFilter, fmt.Sprintf(format, a...), p.i+1, strings.Join(p.toks, " "))
}

func (p *parser) or(depth int) (node, error) {
	n, err := p.and(depth)
	if err != nil {
		return nil, err
	}
	for t := p.peek(); t == "or" || t == "||"; t = p.peek() {
		p.next()
		m, err := p.and(depth)
		if err != nil {
			return nil, err
		}
		n = orNode{n, m}
	}
	return n, nil
}

func (p *parser) and(depth int) (node, error) {
	n, err := p.not(depth)
	if err != nil {
		return nil, err
	}
	for t := p.peek(); t == "and" || t == "&&"; t = p.peek() {
		p.next()
		m, err := p.not(depth)
		if err != nil {
			return nil, err
		}
		n = andNode{n, m}
	}
	return n, nil
}

func (p *parser) not(depth int) (node, error) {
	if depth >= MaxFilterDepth {
		return nil, p.errorf("nested deeper than %d", MaxFilterDepth)
	}
	switch p.peek() {
	case "not", "!":
		p.next()
		n, err := p.not(depth + 1)
		if err != nil {
			return nil, err
		}
		return notNode{n}, nil
	case "(":
		p.next()
		n, err := p.or(depth + 1)
		if err != nil {
			return nil, err
		}
		if p.next() != ")" {
			return nil, p.errorf("missing \")\"")
		}
		return n, nil
	}
	return p.primitive()
}

func (p *parser) primitive() (node, error) {
	t := p.next()
	switch t {
	case "":
		return nil, p.errorf("expression ends where a primitive was expected")
	case "src", "dst", "host", "net", "port", "portrange":
		p.i--
		return p.qualified(0)
	case "tcp", "udp", "icmp":
		proto := protoNames[t]
		// "tcp port 80", "udp dst portrange 1-1024": a port of that
		// protocol only.
		if t != "icmp" {
			save := p.i
			p.dirQual()
			k := p.peek()
			p.i = save
			if k == "port" || k == "portrange" {
				return p.qualified(proto)
			}
		}
		return protoNode{proto}, nil
	case "ip":
		if p.peek() == "proto" {
			p.next()
			return p.protoValue()
		}
		return etherTypeNode{header.EtherTypeIPv4}, nil
	case "proto":
		return p.protoValue()
	case "arp":
		return etherTypeNode{header.EtherTypeARP}, nil
	case "ether":
		if p.peek() == "proto" {
			p.next()
			v, err := p.number(0xffff)
			if err != nil {
				return nil, err
			}
			return etherTypeNode{header.EtherType(v)}, nil
		}
		q := p.dirQual()
		if p.next() != "host" {
			return nil, p.errorf("\"ether\" wants [src|dst] host MAC or proto N")
		}
		w := p.next()
		mac, err := header.ParseMAC(w)
		if err != nil {
			return nil, p.errorf("%q is not a MAC address", w)
		}
		return etherHostNode{q: q, mac: mac}, nil
	case "inbound":
		return dirNode{Inbound}, nil
	case "outbound":
		return dirNode{Outbound}, nil
	case "len":
		op := p.next()
		switch op {
		case "<", "<=", ">", ">=", "=", "!=":
		default:
			return nil, p.errorf("\"len\" wants one of < <= > >= = != and a number, got %q", op)
		}
		v, err := p.number(1 << 20)
		if err != nil {
			return nil, err
		}
		return lenNode{op: op, n: v}, nil
	case "less":
		v, err := p.number(1 << 20)
		if err != nil {
			return nil, err
		}
		return lenNode{op: "<=", n: v}, nil
	case "greater":
		v, err := p.number(1 << 20)
		if err != nil {
			return nil, err
		}
		return lenNode{op: ">=", n: v}, nil
	}
	return nil, p.errorf("unknown primitive %q (want host, net, port, portrange, tcp, udp, icmp, ip, arp, ether, proto, inbound, outbound, len, less, greater)", t)
}

func (p *parser) dirQual() dirQual {
	switch p.peek() {
	case "src":
		p.next()
		return srcOnly
	case "dst":
		p.next()
		return dstOnly
	}
	return either
}

// qualified parses [src|dst] (host ADDR | net PREFIX | port N |
// portrange N-M); proto restricts a port to TCP or UDP.
func (p *parser) qualified(proto uint8) (node, error) {
	q := p.dirQual()
	kw := p.next()
	switch kw {
	case "host":
		if proto != 0 {
			return nil, p.errorf("write \"%s and host ...\"", protoName(proto))
		}
		w := p.next()
		a, err := netip.ParseAddr(w)
		if err != nil || !a.Is4() {
			return nil, p.errorf("%q is not an IPv4 address", w)
		}
		return netNode{q: q, p: netip.PrefixFrom(a, 32), host: true}, nil
	case "net":
		if proto != 0 {
			return nil, p.errorf("write \"%s and net ...\"", protoName(proto))
		}
		w := p.next()
		pf, err := netip.ParsePrefix(w)
		if err != nil || !pf.Addr().Is4() {
			return nil, p.errorf("%q is not an IPv4 prefix (ADDR/LEN)", w)
		}
		if pf != pf.Masked() {
			return nil, p.errorf("net %v has host bits set: did you mean %v?", pf, pf.Masked())
		}
		return netNode{q: q, p: pf}, nil
	case "port":
		v, err := p.number(0xffff)
		if err != nil {
			return nil, err
		}
		return portNode{q: q, lo: uint16(v), hi: uint16(v), proto: proto}, nil
	case "portrange":
		w := p.next()
		a, b, ok := strings.Cut(w, "-")
		lo, err1 := strconv.ParseUint(a, 10, 16)
		hi, err2 := strconv.ParseUint(b, 10, 16)
		if !ok || err1 != nil || err2 != nil || lo > hi {
			return nil, p.errorf("portrange wants LOW-HIGH with LOW <= HIGH <= 65535, got %q", w)
		}
		return portNode{q: q, lo: uint16(lo), hi: uint16(hi), proto: proto, rng: true}, nil
	case "":
		return nil, p.errorf("expression ends after %q", p.toks[len(p.toks)-1])
	}
	return nil, p.errorf("%q: want host, net, port or portrange after src/dst", kw)
}

func (p *parser) protoValue() (node, error) {
	w := p.peek()
	if v, ok := protoNames[w]; ok {
		p.next()
		return protoNode{v}, nil
	}
	v, err := p.number(255)
	if err != nil {
		return nil, err
	}
	return protoNode{uint8(v)}, nil
}

// number reads a decimal (or, with a 0x prefix, hexadecimal) number at
// most max.
func (p *parser) number(max int) (int, error) {
	w := p.next()
	digits, base := w, 10
	if h, ok := strings.CutPrefix(w, "0x"); ok {
		digits, base = h, 16
	}
	v, err := strconv.ParseUint(digits, base, 32)
	if err != nil || int(v) > max {
		return 0, p.errorf("%q: want a number from 0 to %d", w, max)
	}
	return int(v), nil
}
