package netfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/cni-userstack/cni-userstack/netstack/header"
)

// ParseError is a rule-file error with its 1-based line and column.
type ParseError struct {
	Line, Col int
	Msg       string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("line %d, column %d: %s", e.Line, e.Col, e.Msg)
}

// maxRuleText bounds the input ParseRules accepts (a rule file, not a
// stream): 4 MiB, and maxRules the rules in it.
const (
	maxRuleText = 4 << 20
	maxRules    = 100000
)

type token struct {
	s      string
	col    int
	quoted bool // a quoted word is always an argument, even "-x"
}

// tokenize splits a line on blanks; "double quotes" group, with \" and \\
// escapes. A # outside quotes starts a comment.
func tokenize(line string, ln int) ([]token, error) {
	var out []token
	i := 0
	for i < len(line) {
		c := line[i]
		if c == ' ' || c == '\t' || c == '\r' {
			i++
			continue
		}
		if c == '#' {
			break
		}
		start := i
		if c == '"' {
			var b strings.Builder
			i++
			closed := false
			for i < len(line) {
				if line[i] == '\\' && i+1 < len(line) && (line[i+1] == '"' || line[i+1] == '\\') {
					b.WriteByte(line[i+1])
					i += 2
					continue
				}
				if line[i] == '"' {
					closed = true
					i++
					break
				}
				b.WriteByte(line[i])
				i++
			}
			if !closed {
				return nil, &ParseError{ln, start + 1, "unterminated quoted string"}
			}
			out = append(out, token{b.String(), start + 1, true})
			continue
		}
		for i < len(line) && line[i] != ' ' && line[i] != '\t' && line[i] != '\r' {
			i++
		}
		out = append(out, token{line[start:i], start + 1, false})
	}
	return out, nil
}

type parser struct {
	rs    *Ruleset
	table string
	ln    int
	toks  []token
	i     int
	jumps []jumpRef
	rules int
	// markSet: the MARK target of the current rule got its value.
	markSet bool
}

type jumpRef struct {
	table, chain string
	tok          token
	ln           int
}

func (p *parser) errAt(t token, format string, a ...any) error {
	return &ParseError{p.ln, t.col, fmt.Sprintf(format, a...)}
}

func (p *parser) next() (token, bool) {
	if p.i >= len(p.toks) {
		return token{}, false
	}
	t := p.toks[p.i]
	p.i++
	return t, true
}

// arg returns the argument of option opt.
func (p *parser) arg(opt token) (token, error) {
	t, ok := p.next()
	if !ok || !t.quoted && (strings.HasPrefix(t.s, "-") && len(t.s) > 1 && !isNumber(t.s) || t.s == "!") {
		col := opt.col + len(opt.s) + 1
		if ok {
			col = t.col
		}
		return token{}, &ParseError{p.ln, col, fmt.Sprintf("option %s needs an argument", opt.s)}
	}
	return t, nil
}

func isNumber(s string) bool {
	_, err := strconv.Atoi(s)
	return err == nil
}

// ParseRules parses a rule file (the syntax is in the package doc) into a
// checked Ruleset. Errors are *ParseError with line and column.
func ParseRules(text string) (*Ruleset, error) {
	if len(text) > maxRuleText {
		return nil, &ParseError{1, 1, fmt.Sprintf("rule text larger than %d bytes", maxRuleText)}
	}
	p := &parser{rs: NewRuleset(), table: TableFilter}
	for n, line := range strings.Split(text, "\n") {
		p.ln = n + 1
		toks, err := tokenize(line, p.ln)
		if err != nil {
			return nil, err
		}
		if len(toks) == 0 {
			continue
		}
		p.toks, p.i = toks, 0
		if err := p.line(); err != nil {
			return nil, err
		}
	}
	for _, j := range p.jumps {
		if p.rs.Chain(j.table, j.chain) == nil {
			return nil, &ParseError{j.ln, j.tok.col, fmt.Sprintf("jump to unknown chain %q in table %s", j.chain, j.table)}
		}
	}
	if err := p.rs.compile(); err != nil {
		var re *ruleError
		if errors.As(err, &re) && re.r.Line > 0 {
			return nil, &ParseError{re.r.Line, re.r.col, re.msg}
		}
		return nil, &ParseError{1, 1, err.Error()}
	}
	return p.rs, nil
}

func (p *parser) line() error {
	t, _ := p.next()
	switch {
	case strings.HasPrefix(t.s, "*"):
		name := t.s[1:]
		if p.rs.Tables[name] == nil {
			return p.errAt(t, "unknown table %q (filter, nat, mangle)", name)
		}
		p.table = name
		return p.end()
	case t.s == "COMMIT":
		return p.end()
	case strings.HasPrefix(t.s, ":"):
		name := t.s[1:]
		pt, err := p.arg(t)
		if err != nil {
			return err
		}
		if pt.s == "-" {
			if err := p.rs.NewChain(p.table, name); err != nil {
				return p.errAt(t, "%v", err)
			}
		} else if err := p.policy(t, name, pt); err != nil {
			return err
		}
		if c, ok := p.next(); ok && !(strings.HasPrefix(c.s, "[") && strings.HasSuffix(c.s, "]")) {
			return p.errAt(c, "unexpected %q", c.s)
		}
		return p.end()
	case t.s == "-N" || t.s == "--new-chain":
		n, err := p.arg(t)
		if err != nil {
			return err
		}
		if err := p.rs.NewChain(p.table, n.s); err != nil {
			return p.errAt(n, "%v", err)
		}
		return p.end()
	case t.s == "-P" || t.s == "--policy":
		n, err := p.arg(t)
		if err != nil {
			return err
		}
		pt, err := p.arg(n)
		if err != nil {
			return err
		}
		if err := p.policy(n, n.s, pt); err != nil {
			return err
		}
		return p.end()
	case t.s == "-A" || t.s == "--append":
		return p.rule(t)
	}
	return p.errAt(t, "unknown command %q (expected *table, :CHAIN, -N, -P, -A or COMMIT)", t.s)
}

func (p *parser) end() error {
	if t, ok := p.next(); ok {
		return p.errAt(t, "unexpected %q", t.s)
	}
	return nil
}

func (p *parser) policy(at token, chain string, pt token) error {
	c := p.rs.Chain(p.table, chain)
	if c == nil {
		return p.errAt(at, "no chain %s in table %s", chain, p.table)
	}
	if !c.builtin {
		return p.errAt(at, "user chain %s has no policy", chain)
	}
	switch pt.s {
	case "ACCEPT":
		c.Policy = PolicyAccept
	case "DROP":
		c.Policy = PolicyDrop
	default:
		return p.errAt(pt, "policy must be ACCEPT or DROP, not %q", pt.s)
	}
	return nil
}

// rule parses "-A CHAIN [-t table] matches... -j TARGET [options]".
func (p *parser) rule(at token) error {
	if p.rules++; p.rules > maxRules {
		return p.errAt(at, "more than %d rules", maxRules)
	}
	ct, err := p.arg(at)
	if err != nil {
		return err
	}
	table := p.table
	r := &Rule{Line: p.ln}
	p.markSet = false
	var proto uint8
	protoSet := false
	neg := false
	var negTok token
	add := func(m Match) {
		if neg {
			m = Not{M: m}
			neg = false
		}
		r.Matches = append(r.Matches, m)
	}
	var tgtTok token
	for {
		t, ok := p.next()
		if !ok {
			break
		}
		if t.s == "!" {
			if neg {
				return p.errAt(t, "double negation")
			}
			neg, negTok = true, t
			continue
		}
		if r.Target != nil {
			if err := p.targetOption(r, t); err != nil {
				return err
			}
			continue
		}
		switch t.s {
		case "-t", "--table":
			a, err := p.arg(t)
			if err != nil {
				return err
			}
			if p.rs.Tables[a.s] == nil {
				return p.errAt(a, "unknown table %q", a.s)
			}
			table = a.s
		case "-i", "--in-interface", "-o", "--out-interface":
			a, err := p.arg(t)
			if err != nil {
				return err
			}
			if len(a.s) > 15 || strings.ContainsAny(a.s, "/ ") || a.s == "+" {
				return p.errAt(a, "bad link name %q", a.s)
			}
			add(LinkMatch{Out: t.s == "-o" || t.s == "--out-interface", Name: a.s})
		case "-s", "--source", "-d", "--destination":
			a, err := p.arg(t)
			if err != nil {
				return err
			}
			pf, err := parsePrefix(a.s)
			if err != nil {
				return p.errAt(a, "%v", err)
			}
			add(AddrMatch{Dst: t.s == "-d" || t.s == "--destination", Prefix: pf})
		case "-p", "--protocol":
			a, err := p.arg(t)
			if err != nil {
				return err
			}
			if a.s == "all" {
				if neg {
					return p.errAt(negTok, "! -p all matches nothing")
				}
				continue
			}
			pr, ok := parseProto(a.s)
			if !ok {
				return p.errAt(a, "unknown protocol %q", a.s)
			}
			if !neg {
				proto, protoSet = pr, true
			}
			add(ProtoMatch{Proto: pr})
		case "--sport", "--source-port", "--dport", "--destination-port":
			if !protoSet || (proto != header.ProtoTCP && proto != header.ProtoUDP) {
				return p.errAt(t, "%s needs -p tcp or -p udp before it", t.s)
			}
			a, err := p.arg(t)
			if err != nil {
				return err
			}
			lo, hi, err := parseRange(a.s, ":", 0xffff)
			if err != nil {
				return p.errAt(a, "bad port range %q: %v", a.s, err)
			}
			add(PortMatch{Dst: t.s == "--dport" || t.s == "--destination-port", Min: uint16(lo), Max: uint16(hi)})
		case "--icmp-type":
			if !protoSet || proto != header.ProtoICMP {
				return p.errAt(t, "--icmp-type needs -p icmp before it")
			}
			a, err := p.arg(t)
			if err != nil {
				return err
			}
			m, err := parseICMPType(a.s)
			if err != nil {
				return p.errAt(a, "%v", err)
			}
			add(m)
		case "--icmpv6-type":
			if !protoSet || proto != header.ProtoICMPv6 {
				return p.errAt(t, "--icmpv6-type needs -p icmpv6 before it")
			}
			a, err := p.arg(t)
			if err != nil {
				return err
			}
			m, err := parseICMPv6Type(a.s)
			if err != nil {
				return p.errAt(a, "%v", err)
			}
			add(m)
		case "--tcp-flags", "--syn":
			if !protoSet || proto != header.ProtoTCP {
				return p.errAt(t, "%s needs -p tcp before it", t.s)
			}
			if t.s == "--syn" {
				add(TCPFlagsMatch{Mask: header.SYN | header.RST | header.ACK | header.FIN, Set: header.SYN})
				continue
			}
			ma, err := p.arg(t)
			if err != nil {
				return err
			}
			mask, err := parseFlags(ma.s)
			if err != nil {
				return p.errAt(ma, "%v", err)
			}
			sa, err := p.arg(ma)
			if err != nil {
				return err
			}
			set, err := parseFlags(sa.s)
			if err != nil {
				return p.errAt(sa, "%v", err)
			}
			if set&^mask != 0 {
				return p.errAt(sa, "flags %s are not in the mask %s", sa.s, ma.s)
			}
			add(TCPFlagsMatch{Mask: mask, Set: set})
		case "--ctstate", "--state":
			a, err := p.arg(t)
			if err != nil {
				return err
			}
			var s CtState
			for _, n := range strings.Split(a.s, ",") {
				i := indexOf(ctStateNames[:], n)
				if i < 0 {
					return p.errAt(a, "unknown conntrack state %q (NEW, ESTABLISHED, RELATED, INVALID, UNTRACKED)", n)
				}
				s |= 1 << i
			}
			add(CtStateMatch{States: s})
		case "--mark":
			a, err := p.arg(t)
			if err != nil {
				return err
			}
			v, m, err := parseMark(a.s)
			if err != nil {
				return p.errAt(a, "%v", err)
			}
			add(MarkMatch{Value: v & m, Mask: m})
		case "--length":
			a, err := p.arg(t)
			if err != nil {
				return err
			}
			lo, hi, err := parseRange(a.s, ":", 0xffff)
			if err != nil {
				return p.errAt(a, "bad length range %q: %v", a.s, err)
			}
			add(LengthMatch{Min: lo, Max: hi})
		case "-m", "--match":
			a, err := p.arg(t)
			if err != nil {
				return err
			}
			switch a.s {
			case "tcp", "udp", "icmp", "conntrack", "state", "mark", "length", "comment":
			default:
				return p.errAt(a, "unknown match module %q", a.s)
			}
		case "--comment":
			if _, err := p.arg(t); err != nil {
				return err
			}
		case "-j", "--jump":
			a, err := p.arg(t)
			if err != nil {
				return err
			}
			tgtTok = a
			r.col = a.col
			r.Target = p.newTarget(a, table)
		default:
			return p.errAt(t, "unknown option %q", t.s)
		}
		if neg && t.s != "!" {
			return p.errAt(negTok, "! must precede a match option")
		}
	}
	if neg {
		return p.errAt(negTok, "! at the end of the rule")
	}
	if r.Target == nil {
		return p.errAt(at, "rule without -j target")
	}
	if j, ok := r.Target.(*Jump); ok {
		p.jumps = append(p.jumps, jumpRef{table, j.Chain, tgtTok, p.ln})
	}
	if err := p.checkTarget(r, tgtTok); err != nil {
		return err
	}
	if err := p.rs.Append(table, ct.s, r); err != nil {
		return p.errAt(ct, "%v", err)
	}
	return nil
}

func indexOf(list []string, s string) int {
	for i, n := range list {
		if n == s {
			return i
		}
	}
	return -1
}

func (p *parser) newTarget(a token, table string) Target {
	switch a.s {
	case "ACCEPT":
		return &AcceptTarget{}
	case "DROP":
		return &DropTarget{}
	case "RETURN":
		return &ReturnTarget{}
	case "REJECT":
		return &Reject{}
	case "LOG":
		return &Log{}
	case "MARK":
		return &Mark{Mask: ^uint32(0)}
	case "SNAT":
		return &SNAT{}
	case "DNAT":
		return &DNAT{}
	case "MASQUERADE":
		return &Masquerade{}
	case "REDIRECT":
		return &Redirect{}
	case "DIVERT":
		return &Divert{}
	}
	return &Jump{Chain: a.s}
}

// targetOption parses an option after -j TARGET.
func (p *parser) targetOption(r *Rule, t token) error {
	a, err := p.arg(t)
	if err != nil {
		return err
	}
	switch tg := r.Target.(type) {
	case *Reject:
		if t.s == "--reject-with" {
			i := indexOf(rejectNames[:], a.s)
			if w, ok := rejectNames6[a.s]; ok {
				i = int(w)
			}
			if i < 0 {
				return p.errAt(a, "unknown --reject-with %q (%s)", a.s, strings.Join(rejectNames[:], ", "))
			}
			tg.With = RejectWith(i)
			return nil
		}
	case *Log:
		if t.s == "--log-prefix" {
			if len(a.s) > 29 {
				return p.errAt(a, "log prefix longer than 29 characters")
			}
			tg.Prefix = a.s
			return nil
		}
	case *Mark:
		if t.s == "--set-mark" || t.s == "--set-xmark" {
			v, m, err := parseMark(a.s)
			if err != nil {
				return p.errAt(a, "%v", err)
			}
			if t.s == "--set-mark" {
				m |= v // iptables: --set-mark v/m is --set-xmark v/(m|v)
			}
			tg.Value, tg.Mask = v, m
			p.markSet = true
			return nil
		}
	case *SNAT, *DNAT:
		want := "--to-source"
		if _, ok := tg.(*DNAT); ok {
			want = "--to-destination"
		}
		if t.s == want || t.s == "--to" {
			rg, err := parseNATRange(a.s)
			if err != nil {
				return p.errAt(a, "%v", err)
			}
			if s, ok := tg.(*SNAT); ok {
				s.To = rg
			} else {
				tg.(*DNAT).To = rg
			}
			return nil
		}
	case *Masquerade, *Redirect:
		if t.s == "--to-ports" {
			lo, hi, err := parseRange(a.s, "-", 0xffff)
			if err != nil || lo == 0 {
				return p.errAt(a, "bad --to-ports %q", a.s)
			}
			if m, ok := tg.(*Masquerade); ok {
				m.MinPort, m.MaxPort = uint16(lo), uint16(hi)
			} else {
				tg.(*Redirect).MinPort, tg.(*Redirect).MaxPort = uint16(lo), uint16(hi)
			}
			return nil
		}
	}
	return p.errAt(t, "unknown option %q for target %s", t.s, r.Target)
}

// checkTarget refuses targets missing their required options.
func (p *parser) checkTarget(r *Rule, at token) error {
	switch tg := r.Target.(type) {
	case *SNAT:
		if !tg.To.Min.IsValid() {
			return p.errAt(at, "SNAT needs --to-source")
		}
	case *DNAT:
		if !tg.To.Min.IsValid() {
			return p.errAt(at, "DNAT needs --to-destination")
		}
	case *Mark:
		if !p.markSet {
			return p.errAt(at, "MARK needs --set-mark or --set-xmark")
		}
	}
	return nil
}

// parsePrefix parses an IPv4 or IPv6 address or prefix (IPv4-mapped and
// zoned IPv6 addresses are refused).
func parsePrefix(s string) (netip.Prefix, error) {
	fam := "IPv4"
	if strings.Contains(s, ":") {
		fam = "IPv6"
	}
	if strings.Contains(s, "/") {
		pf, err := netip.ParsePrefix(s)
		if err != nil || pf.Addr().Is4In6() {
			return netip.Prefix{}, fmt.Errorf("bad %s prefix %q", fam, s)
		}
		return pf.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Is4In6() || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("bad %s address %q", fam, s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func parseProto(s string) (uint8, bool) {
	switch strings.ToLower(s) {
	case "tcp":
		return header.ProtoTCP, true
	case "udp":
		return header.ProtoUDP, true
	case "icmp":
		return header.ProtoICMP, true
	case "icmpv6", "ipv6-icmp", "icmp6":
		return header.ProtoICMPv6, true
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil || n == 0 {
		return 0, false
	}
	return uint8(n), true
}

// parseRange parses "N" or "N<sep>M" with 0 <= N <= M <= limit.
func parseRange(s, sep string, limit int) (int, int, error) {
	a, b, two := strings.Cut(s, sep)
	lo, err := strconv.Atoi(a)
	if err != nil || lo < 0 || lo > limit {
		return 0, 0, fmt.Errorf("%q is not a number in 0..%d", a, limit)
	}
	hi := lo
	if two {
		if hi, err = strconv.Atoi(b); err != nil || hi < 0 || hi > limit {
			return 0, 0, fmt.Errorf("%q is not a number in 0..%d", b, limit)
		}
	}
	if lo > hi {
		return 0, 0, fmt.Errorf("range %d..%d is empty", lo, hi)
	}
	return lo, hi, nil
}

var icmpNames = map[string]ICMPTypeMatch{
	"echo-reply":              {Type: header.ICMPv4EchoReply, AnyCode: true},
	"destination-unreachable": {Type: header.ICMPv4DstUnreachable, AnyCode: true},
	"network-unreachable":     {Type: header.ICMPv4DstUnreachable, Code: header.ICMPv4NetUnreachable},
	"host-unreachable":        {Type: header.ICMPv4DstUnreachable, Code: header.ICMPv4HostUnreachable},
	"protocol-unreachable":    {Type: header.ICMPv4DstUnreachable, Code: header.ICMPv4ProtoUnreachable},
	"port-unreachable":        {Type: header.ICMPv4DstUnreachable, Code: header.ICMPv4PortUnreachable},
	"fragmentation-needed":    {Type: header.ICMPv4DstUnreachable, Code: header.ICMPv4FragNeeded},
	"redirect":                {Type: header.ICMPv4Redirect, AnyCode: true},
	"echo-request":            {Type: header.ICMPv4Echo, AnyCode: true},
	"time-exceeded":           {Type: header.ICMPv4TimeExceeded, AnyCode: true},
	"ttl-exceeded":            {Type: header.ICMPv4TimeExceeded, Code: header.ICMPv4TTLExceeded},
	"parameter-problem":       {Type: header.ICMPv4ParamProblem, AnyCode: true},
}

var icmpv6Names = map[string]ICMPTypeMatch{
	"destination-unreachable":  {Type: header.ICMPv6DstUnreachable, AnyCode: true, V6: true},
	"no-route":                 {Type: header.ICMPv6DstUnreachable, Code: header.ICMPv6NoRoute, V6: true},
	"communication-prohibited": {Type: header.ICMPv6DstUnreachable, Code: header.ICMPv6AdminProhibited, V6: true},
	"address-unreachable":      {Type: header.ICMPv6DstUnreachable, Code: header.ICMPv6AddrUnreachable, V6: true},
	"port-unreachable":         {Type: header.ICMPv6DstUnreachable, Code: header.ICMPv6PortUnreachable, V6: true},
	"packet-too-big":           {Type: header.ICMPv6PacketTooBig, AnyCode: true, V6: true},
	"time-exceeded":            {Type: header.ICMPv6TimeExceeded, AnyCode: true, V6: true},
	"ttl-exceeded":             {Type: header.ICMPv6TimeExceeded, Code: header.ICMPv6HopLimitExceeded, V6: true},
	"parameter-problem":        {Type: header.ICMPv6ParamProblem, AnyCode: true, V6: true},
	"echo-request":             {Type: header.ICMPv6EchoRequest, AnyCode: true, V6: true},
	"echo-reply":               {Type: header.ICMPv6EchoReply, AnyCode: true, V6: true},
	"router-solicitation":      {Type: header.ICMPv6RouterSolicit, AnyCode: true, V6: true},
	"router-advertisement":     {Type: header.ICMPv6RouterAdvert, AnyCode: true, V6: true},
	"neighbour-solicitation":   {Type: header.ICMPv6NeighborSolicit, AnyCode: true, V6: true},
	"neighbour-advertisement":  {Type: header.ICMPv6NeighborAdvert, AnyCode: true, V6: true},
	"redirect":                 {Type: header.ICMPv6Redirect, AnyCode: true, V6: true},
}

// parseICMPv6Type parses --icmpv6-type: a name (ip6tables') or T[/C].
func parseICMPv6Type(s string) (ICMPTypeMatch, error) {
	if m, ok := icmpv6Names[s]; ok {
		return m, nil
	}
	m, err := parseICMPType(s)
	if err != nil || icmpNames[s] != (ICMPTypeMatch{}) {
		return ICMPTypeMatch{}, fmt.Errorf("unknown ICMPv6 type %q", s)
	}
	m.V6 = true
	return m, nil
}

// rejectNames6 are ip6t_REJECT's names, mapped to the same RejectWith
// values (REJECT answers each family in its own ICMP).
var rejectNames6 = map[string]RejectWith{
	"icmp6-port-unreachable": RejectPortUnreachable,
	"icmp6-addr-unreachable": RejectHostUnreachable,
	"icmp6-no-route":         RejectNetUnreachable,
	"icmp6-adm-prohibited":   RejectAdminProhibited,
}

func parseICMPType(s string) (ICMPTypeMatch, error) {
	if m, ok := icmpNames[s]; ok {
		return m, nil
	}
	ts, cs, withCode := strings.Cut(s, "/")
	t, err := strconv.ParseUint(ts, 10, 8)
	if err != nil {
		return ICMPTypeMatch{}, fmt.Errorf("unknown ICMP type %q", s)
	}
	m := ICMPTypeMatch{Type: uint8(t), AnyCode: !withCode}
	if withCode {
		c, err := strconv.ParseUint(cs, 10, 8)
		if err != nil {
			return ICMPTypeMatch{}, fmt.Errorf("bad ICMP code %q", cs)
		}
		m.Code = uint8(c)
	}
	return m, nil
}

func parseFlags(s string) (header.TCPFlags, error) {
	switch s {
	case "ALL":
		return 0xff, nil
	case "NONE":
		return 0, nil
	}
	var f header.TCPFlags
	for _, n := range strings.Split(s, ",") {
		i := indexOf(tcpFlagNames[:], n)
		if i < 0 {
			return 0, fmt.Errorf("unknown TCP flag %q (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR, ALL, NONE)", n)
		}
		f |= 1 << i
	}
	return f, nil
}

func parseMark(s string) (v, m uint32, err error) {
	vs, ms, hasMask := strings.Cut(s, "/")
	v64, err := strconv.ParseUint(vs, 0, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("bad mark %q", vs)
	}
	m64 := uint64(0xffffffff)
	if hasMask {
		if m64, err = strconv.ParseUint(ms, 0, 32); err != nil {
			return 0, 0, fmt.Errorf("bad mask %q", ms)
		}
	}
	return uint32(v64), uint32(m64), nil
}

// parseNATRange parses a[-b][:p[-q]]; for IPv6, ip6tables' forms
// a[-b] (no ports) and [a][-[b]][:p[-q]].
func parseNATRange(s string) (NATRange, error) {
	var r NATRange
	as, ps, hasPorts := strings.Cut(s, ":")
	if strings.HasPrefix(s, "[") {
		i := strings.LastIndex(s, "]")
		if i < 0 {
			return r, fmt.Errorf("bad IPv6 address range %q", s)
		}
		as, ps, hasPorts = strings.NewReplacer("[", "", "]", "").Replace(s[:i+1]), "", false
		if rest := s[i+1:]; rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return r, fmt.Errorf("bad IPv6 address range %q", s)
			}
			ps, hasPorts = rest[1:], true
		}
	} else if strings.Count(s, ":") > 1 {
		as, ps, hasPorts = s, "", false // an IPv6 range without ports
	}
	lo, hi, isRange := strings.Cut(as, "-")
	a, err := netip.ParseAddr(lo)
	if err != nil || a.Is4In6() || a.Zone() != "" {
		if strings.Contains(lo, ":") {
			return r, fmt.Errorf("bad IPv6 address %q", lo)
		}
		return r, fmt.Errorf("bad IPv4 address %q", lo)
	}
	r.Min, r.Max = a, a
	if isRange {
		b, err := netip.ParseAddr(hi)
		if err != nil || b.Is4() != a.Is4() || b.Zone() != "" || b.Less(a) {
			return r, fmt.Errorf("bad address range %q", as)
		}
		r.Max = b
	}
	if hasPorts {
		plo, phi, err := parseRange(ps, "-", 0xffff)
		if err != nil || plo == 0 {
			return r, fmt.Errorf("bad port range %q", ps)
		}
		r.MinPort, r.MaxPort = uint16(plo), uint16(phi)
	}
	return r, nil
}
