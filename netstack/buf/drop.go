package buf

import (
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
)

// DropReason names why a packet was freed (enum skb_drop_reason). Layers
// register their reasons at package initialisation with NewDropReason, so
// adding a reason never edits this package.
type DropReason uint16

// MaxDropReasons bounds the registry; NewDropReason panics past it, at
// program start, never on a packet path.
const MaxDropReasons = 256

var (
	reasonMu    sync.Mutex
	reasonNames = []string{"NOT_SPECIFIED"}
	reasonByKey = map[string]DropReason{"NOT_SPECIFIED": 0}
)

// DropNotSpecified is the reason of last resort (SKB_DROP_REASON_NOT_SPECIFIED).
const DropNotSpecified DropReason = 0

// NewDropReason registers a reason by its kernel-style name, e.g.
// "IP_CSUM". Registering a name twice returns the same reason.
func NewDropReason(name string) DropReason {
	reasonMu.Lock()
	defer reasonMu.Unlock()
	if r, ok := reasonByKey[name]; ok {
		return r
	}
	if len(reasonNames) >= MaxDropReasons {
		panic(fmt.Sprintf("buf: more than %d drop reasons registering %q", MaxDropReasons, name))
	}
	r := DropReason(len(reasonNames))
	reasonNames = append(reasonNames, name)
	reasonByKey[name] = r
	return r
}

// String is the registered name.
func (r DropReason) String() string {
	reasonMu.Lock()
	defer reasonMu.Unlock()
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("DropReason(%d)", r)
}

// Reasons that belong to no single layer.
var (
	DropQueueFull = NewDropReason("QUEUE_FULL")
	DropNICDown   = NewDropReason("NIC_DOWN")
	DropLinkError = NewDropReason("LINK_ERROR")
)

// DropStats counts drops by reason; the zero value is ready and safe for
// concurrent use.
type DropStats struct {
	counts [MaxDropReasons]atomic.Uint64
}

// Add counts one drop.
func (d *DropStats) Add(r DropReason) { d.counts[r].Add(1) }

// Get returns the count for r.
func (d *DropStats) Get(r DropReason) uint64 { return d.counts[r].Load() }

// Total is the sum over every reason.
func (d *DropStats) Total() uint64 {
	var t uint64
	for i := range d.counts {
		t += d.counts[i].Load()
	}
	return t
}

// Snapshot returns the non-zero counts by reason name.
func (d *DropStats) Snapshot() map[string]uint64 {
	m := map[string]uint64{}
	for i := range d.counts {
		if v := d.counts[i].Load(); v != 0 {
			m[DropReason(i).String()] = v
		}
	}
	return m
}

// Names lists the reasons with a non-zero count, sorted.
func (d *DropStats) Names() []string {
	var out []string
	for k := range d.Snapshot() {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
