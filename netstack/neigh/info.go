package neigh

import (
	"time"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
)

// Read-only introspection for `cni-userstack neigh` (`ip -s neigh`) and
// the neighbour metrics: a copy of every entry with its NUD details, and
// the entries per state. Both take Table.mu for one pass over the table
// (bound: Config.MaxEntries) and call nothing under it.

func init() {
	buf.SetDropLayer("neigh", DropNeighFailed, DropNeighQueueFull, DropNeighCreateFail, DropNeighDead,
		DropARPInvalid, DropARPNotOurs)
}

// EntryInfo is an Entry with what `ip -s neigh` adds: probes sent in the
// current resolution phase, packets queued awaiting it, and when the entry
// was last confirmed and used (zero: never).
type EntryInfo struct {
	Entry
	Probes    int
	Queued    int
	Confirmed time.Time
	Used      time.Time
}

// Dump returns every entry with its details, in no particular order.
func (t *Table) Dump() []EntryInfo {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]EntryInfo, 0, len(t.entries))
	for _, e := range t.entries {
		out = append(out, EntryInfo{Entry: e.snapshot(), Probes: e.probes, Queued: e.pending.Len(),
			Confirmed: e.confirmed, Used: e.used})
	}
	return out
}

// StateCounts returns the number of entries in each NUD state.
func (t *Table) StateCounts() map[State]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[State]int, len(stateNames))
	for _, e := range t.entries {
		m[e.state]++
	}
	return m
}

// States lists every NUD state in the kernel's order.
func States() []State {
	out := make([]State, len(stateNames))
	for i := range out {
		out[i] = State(i)
	}
	return out
}
