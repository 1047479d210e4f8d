package inet

import (
	"sync"
	"sync/atomic"
)

// RPFilter is the reverse-path policy of each NIC (conf/<nic>/rp_filter):
// strict, RFC 3704 §2.2, or off. A NIC without a setting of its own takes
// the default. IPv4 and IPv6 each keep one (Linux leaves IPv6 to the
// rpfilter netfilter match; we apply the same rule to both families).
// Readers load an atomic pointer; Set copies the map (copy on write).
type RPFilter struct {
	strictDefault bool
	mu            sync.Mutex // Set only
	override      atomic.Pointer[map[int]bool]
}

// Init sets the policy of NICs without one of their own.
func (f *RPFilter) Init(strict bool) { f.strictDefault = strict }

// Set sets NIC nicID's policy.
func (f *RPFilter) Set(nicID int, strict bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := map[int]bool{}
	if p := f.override.Load(); p != nil {
		for k, v := range *p {
			m[k] = v
		}
	}
	m[nicID] = strict
	f.override.Store(&m)
}

// Strict reports whether NIC nicID checks reverse paths strictly.
func (f *RPFilter) Strict(nicID int) bool {
	if p := f.override.Load(); p != nil {
		if s, ok := (*p)[nicID]; ok {
			return s
		}
	}
	return f.strictDefault
}
