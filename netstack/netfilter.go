package netstack

import (
	"github.com/cni-userstack/cni-userstack/netstack/netfilter"
)

// EnableNetfilter creates the stack's rule engine, connection tracking and
// NAT (nf_tables/conntrack modules loading) on its hooks and returns it;
// later calls return the same one and ignore cfg. It is not there by
// default: conntrack costs every packet a table lookup, which a stack
// without rules should not pay. The stack fills cfg's Hooks, Clock,
// Devices, FIB, Neigh, Sender, and for IPv6 Hooks6 and Sender6.
func (s *Stack) EnableNetfilter(cfg netfilter.Config) *netfilter.Netfilter {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nf == nil {
		cfg.Hooks, cfg.Clock, cfg.Devices, cfg.FIB, cfg.Neigh, cfg.Sender = s.hooks, s.clk, s.devs, s.fib, s.neigh, s.ip
		cfg.Hooks6, cfg.Sender6 = s.hooks6, s.ip6
		s.nf = netfilter.New(cfg)
	}
	return s.nf
}

// Netfilter is the rule engine EnableNetfilter made, nil before.
func (s *Stack) Netfilter() *netfilter.Netfilter {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nf
}
