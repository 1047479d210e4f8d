package route

import (
	"net/netip"
	"slices"
)

// Read-only introspection for `cni-userstack route` (`ip route show table
// all`): the main table is Routes; the local table (the stack's
// addresses, RTN_LOCAL) and the broadcast entries the connected prefixes
// imply (RTN_BROADCAST) are listed here. Both read the published snapshot
// or copy the master list under Table.mu; nothing here is on a packet
// path.

// LocalEntry is one entry of the local table: addr is an address of the
// stack on NIC (`local ADDR dev NIC table local`). An address held by
// several NICs (the gateway on every pod link) has one entry per NIC;
// Primary is set on the entry the address resolves to (the first NIC).
type LocalEntry struct {
	Addr    netip.Addr
	NIC     int
	Primary bool
}

// Locals returns the local table in insertion order.
func (t *Table) Locals() []LocalEntry {
	t.mu.Lock()
	ls := slices.Clone(t.locals)
	t.mu.Unlock()
	s := t.load()
	out := make([]LocalEntry, 0, len(ls))
	for _, l := range ls {
		var nic int
		var ok bool
		if l.addr.Is4() {
			nic, ok = s.local[key(l.addr)]
		} else {
			nic, ok = s.v6.local[l.addr]
		}
		out = append(out, LocalEntry{Addr: l.addr, NIC: l.nic, Primary: ok && nic == l.nic})
	}
	return out
}

// BroadcastEntry is the directed broadcast address of a connected prefix
// (`broadcast ADDR dev NIC table local`).
type BroadcastEntry struct {
	Addr netip.Addr
	NIC  int
}

// Broadcasts returns the directed broadcast entries, by address.
func (t *Table) Broadcasts() []BroadcastEntry {
	s := t.load()
	out := make([]BroadcastEntry, 0, len(s.bcast))
	for k, nic := range s.bcast {
		out = append(out, BroadcastEntry{Addr: addrOf(k), NIC: nic})
	}
	slices.SortFunc(out, func(a, b BroadcastEntry) int { return a.Addr.Compare(b.Addr) })
	return out
}
