package netfilter

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
)

// Policy is a built-in chain's verdict for packets no rule decided.
type Policy uint8

const (
	PolicyAccept Policy = iota
	PolicyDrop
)

func (p Policy) String() string {
	if p == PolicyDrop {
		return "DROP"
	}
	return "ACCEPT"
}

// Table names.
const (
	TableFilter = "filter"
	TableNAT    = "nat"
	TableMangle = "mangle"
)

// builtinChains lists each table's built-in chains by hook (iptable_filter,
// iptable_nat, iptable_mangle valid_hooks).
var builtinChains = map[string][]Hook{
	TableFilter: {LocalIn, Forward, LocalOut},
	TableNAT:    {PreRouting, LocalIn, LocalOut, PostRouting},
	TableMangle: {PreRouting, LocalIn, Forward, LocalOut, PostRouting},
}

var tableOrder = []string{TableFilter, TableNAT, TableMangle}

// Chain is a built-in chain (one per hook of its table, with a policy)
// or a user chain reached by jumps.
type Chain struct {
	Name    string
	Policy  Policy
	Rules   []*Rule
	builtin bool
	hook    Hook

	// policy counters: packets that fell off the end of a built-in chain.
	packets, bytes atomic.Uint64
	// compiled by Load: jump targets of Rules[i], nil for other targets.
	jumps []*Chain
	hooks uint8 // mask of hooks the chain is reachable from
}

// Builtin reports whether c is a built-in chain.
func (c *Chain) Builtin() bool { return c.builtin }

// PolicyCounters returns the packets and bytes the policy decided.
func (c *Chain) PolicyCounters() (packets, bytes uint64) { return c.packets.Load(), c.bytes.Load() }

// Table is one of filter, nat, mangle.
type Table struct {
	Name   string
	Chains map[string]*Chain
	order  []string // chain names in creation order
}

// Ruleset is a complete set of tables: built by ParseRules or the Go API
// (NewRuleset, NewChain, Append, SetPolicy) and published by Netfilter.Load.
// A loaded Ruleset must not be changed; build a new one to change rules.
type Ruleset struct {
	Tables map[string]*Table
	// hooks[table][hook] is the built-in chain run at hook, compiled by Load.
	byHook [3][NumHooks]*Chain
}

// NewRuleset returns the three tables with their built-in chains, empty,
// with ACCEPT policies.
func NewRuleset() *Ruleset {
	rs := &Ruleset{Tables: map[string]*Table{}}
	for _, name := range tableOrder {
		t := &Table{Name: name, Chains: map[string]*Chain{}}
		for _, h := range builtinChains[name] {
			c := &Chain{Name: h.String(), builtin: true, hook: h}
			t.Chains[c.Name] = c
			t.order = append(t.order, c.Name)
		}
		rs.Tables[name] = t
	}
	return rs
}

// Errors of the Go API and Load.
var (
	ErrNoTable    = errors.New("no such table")
	ErrNoChain    = errors.New("no such chain")
	ErrChainExist = errors.New("chain already exists")
	ErrBadRule    = errors.New("bad rule")
	ErrLoop       = errors.New("jump loop")
)

// Chain returns the chain, or nil.
func (rs *Ruleset) Chain(table, chain string) *Chain {
	t := rs.Tables[table]
	if t == nil {
		return nil
	}
	return t.Chains[chain]
}

// NewChain adds a user chain (iptables -N).
func (rs *Ruleset) NewChain(table, name string) error {
	t := rs.Tables[table]
	if t == nil {
		return fmt.Errorf("%w: %q", ErrNoTable, table)
	}
	if name == "" || len(name) > 28 || strings.ContainsAny(name, " \t!") || name[0] == '-' {
		return fmt.Errorf("%w: invalid chain name %q", ErrBadRule, name)
	}
	if isBuiltinTarget(name) {
		return fmt.Errorf("%w: chain name %q is a target name", ErrBadRule, name)
	}
	if _, ok := t.Chains[name]; ok {
		return fmt.Errorf("%w: %s in %s", ErrChainExist, name, table)
	}
	t.Chains[name] = &Chain{Name: name}
	t.order = append(t.order, name)
	return nil
}

// Append adds r at the end of a chain (iptables -A). Targets are checked
// by Load, when every chain exists.
func (rs *Ruleset) Append(table, chain string, r *Rule) error {
	c := rs.Chain(table, chain)
	if c == nil {
		return fmt.Errorf("%w: %s in table %s", ErrNoChain, chain, table)
	}
	if r == nil || r.Target == nil {
		return fmt.Errorf("%w: rule without a target", ErrBadRule)
	}
	c.Rules = append(c.Rules, r)
	return nil
}

// SetPolicy sets a built-in chain's policy (iptables -P).
func (rs *Ruleset) SetPolicy(table, chain string, p Policy) error {
	c := rs.Chain(table, chain)
	if c == nil {
		return fmt.Errorf("%w: %s in table %s", ErrNoChain, chain, table)
	}
	if !c.builtin {
		return fmt.Errorf("%w: user chain %s has no policy", ErrBadRule, chain)
	}
	c.Policy = p
	return nil
}

// hookRestricted reports which hooks a target may run at, 0 for any
// (xt_target.hooks) and which table it needs ("" for any).
func targetLimits(t Target) (hooks uint8, table string) {
	switch t.(type) {
	case *SNAT, *Masquerade:
		return 1<<PostRouting | 1<<LocalIn, TableNAT
	case *DNAT, *Redirect:
		return 1<<PreRouting | 1<<LocalOut, TableNAT
	case *Reject:
		return 1<<LocalIn | 1<<Forward | 1<<LocalOut, ""
	case *Divert:
		return 1 << PreRouting, TableMangle
	}
	return 0, ""
}

// compile resolves jumps, rejects loops and misplaced targets, and
// indexes the built-in chains by hook (translate_table / mark_source_chains).
func (rs *Ruleset) compile() error {
	for ti, name := range tableOrder {
		t := rs.Tables[name]
		if t == nil {
			return fmt.Errorf("%w: %q missing", ErrNoTable, name)
		}
		for _, c := range t.Chains {
			c.hooks = 0
			c.jumps = make([]*Chain, len(c.Rules))
			for i, r := range c.Rules {
				if r.Target == nil {
					return fmt.Errorf("%w: %s %s rule %d has no target", ErrBadRule, name, c.Name, i+1)
				}
				if j, ok := r.Target.(*Jump); ok {
					dst := t.Chains[j.Chain]
					if dst == nil {
						return fmt.Errorf("%w: %s %s rule %d jumps to unknown chain %q%s", ErrNoChain, name, c.Name, i+1, j.Chain, lineSuffix(r))
					}
					if dst.builtin {
						return fmt.Errorf("%w: %s %s rule %d jumps to built-in chain %s%s", ErrBadRule, name, c.Name, i+1, j.Chain, lineSuffix(r))
					}
					c.jumps[i] = dst
				}
			}
		}
		for _, h := range builtinChains[name] {
			c := t.Chains[h.String()]
			rs.byHook[ti][h] = c
			if err := mark(c, h, map[*Chain]bool{}); err != nil {
				return err
			}
		}
		names := make([]string, 0, len(t.Chains))
		for n := range t.Chains {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			c := t.Chains[n]
			for i, r := range c.Rules {
				hooks, table := targetLimits(r.Target)
				if table != "" && table != name {
					return &ruleError{r, fmt.Sprintf("%s %s rule %d: target %s is only valid in table %s", name, c.Name, i+1, r.Target, table), ErrBadRule}
				}
				if hooks != 0 && c.hooks&^hooks != 0 {
					return &ruleError{r, fmt.Sprintf("%s %s rule %d: target %s is not valid at %s", name, c.Name, i+1, r.Target, hookList(c.hooks&^hooks)), ErrBadRule}
				}
			}
		}
	}
	return nil
}

// ruleError is a compile error about one rule, so ParseRules can place it.
type ruleError struct {
	r   *Rule
	msg string
	err error
}

func (e *ruleError) Error() string { return e.msg + lineSuffix(e.r) }
func (e *ruleError) Unwrap() error { return e.err }

func lineSuffix(r *Rule) string {
	if r.Line > 0 {
		return fmt.Sprintf(" (line %d)", r.Line)
	}
	return ""
}

func hookList(mask uint8) string {
	var out []string
	for h := Hook(0); h < NumHooks; h++ {
		if mask&(1<<h) != 0 {
			out = append(out, h.String())
		}
	}
	return strings.Join(out, ",")
}

// mark walks the chains reachable from c, recording the hook and
// refusing loops (mark_source_chains).
func mark(c *Chain, h Hook, onPath map[*Chain]bool) error {
	onPath[c] = true
	defer delete(onPath, c)
	c.hooks |= 1 << h
	for i, j := range c.jumps {
		if j == nil {
			continue
		}
		if onPath[j] {
			return &ruleError{c.Rules[i], fmt.Sprintf("jump loop: %s -> %s comes back to %s", c.Name, j.Name, j.Name), ErrLoop}
		}
		if err := mark(j, h, onPath); err != nil {
			return err
		}
	}
	return nil
}

// String prints the ruleset in the rule-file syntax with counters, like
// iptables-save -c.
func (rs *Ruleset) String() string {
	var b strings.Builder
	for _, name := range tableOrder {
		t := rs.Tables[name]
		if t == nil {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", name)
		for _, cn := range t.order {
			c := t.Chains[cn]
			if c.builtin {
				p, by := c.PolicyCounters()
				fmt.Fprintf(&b, ":%s %s [%d:%d]\n", c.Name, c.Policy, p, by)
			} else {
				fmt.Fprintf(&b, ":%s - [0:0]\n", c.Name)
			}
		}
		for _, cn := range t.order {
			c := t.Chains[cn]
			for _, r := range c.Rules {
				p, by := r.Counters()
				fmt.Fprintf(&b, "[%d:%d] -A %s %s\n", p, by, c.Name, r)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}
