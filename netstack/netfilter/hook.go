package netfilter

import (
	"sort"
	"sync"
	"sync/atomic"

	"github.com/cni-userstack/cni-userstack/netstack/buf"
)

// Hook names a hook point (enum nf_inet_hooks).
type Hook uint8

const (
	PreRouting Hook = iota
	LocalIn
	Forward
	LocalOut
	PostRouting
	NumHooks
)

var hookNames = [NumHooks]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

func (h Hook) String() string {
	if h < NumHooks {
		return hookNames[h]
	}
	return "HOOK?"
}

// Priorities in the kernel's order (enum nf_ip_hook_priorities): lower runs first.
const (
	PriRaw       = -300
	PriConntrack = -200
	PriMangle    = -150
	PriNATDst    = -100
	PriFilter    = 0
	PriNATSrc    = 100
	PriConfirm   = 1<<31 - 1
)

// Verdict is what a hook function decided.
type Verdict struct {
	kind   uint8
	reason buf.DropReason
}

const (
	kindAccept uint8 = iota
	kindDrop
	kindStolen
)

// Accept lets the packet continue.
func Accept() Verdict { return Verdict{} }

// Drop asks the caller to free the packet with reason.
func Drop(reason buf.DropReason) Verdict { return Verdict{kind: kindDrop, reason: reason} }

// Stolen says the hook function kept the packet (it queued, diverted or
// freed it); the caller must not touch it again.
func Stolen() Verdict { return Verdict{kind: kindStolen} }

func (v Verdict) Accepted() bool         { return v.kind == kindAccept }
func (v Verdict) Dropped() bool          { return v.kind == kindDrop }
func (v Verdict) Stolen() bool           { return v.kind == kindStolen }
func (v Verdict) Reason() buf.DropReason { return v.reason }

// DropPolicy is the reason recorded when a rule or chain policy drops.
var DropPolicy = buf.NewDropReason("NETFILTER_DROP")

// State is what a hook function learns about a packet besides its bytes.
type State struct {
	Hook Hook
	In   int // input NIC ID, 0 at LOCAL_OUT
	Out  int // output NIC ID, 0 before routing
}

// Func is a hook function (nf_hookfn). It may modify skb (after
// skb.Writable) and returns a verdict; with Stolen it owns skb. st, the
// hook point and the NICs, is its own copy.
type Func func(skb *buf.SKB, st State) Verdict

// Ops is one registration (nf_hook_ops).
type Ops struct {
	Hook     Hook
	Priority int
	Name     string
	Fn       Func
}

// Hooks holds the registered functions of one stack. Hook is lock-free:
// registration publishes a new immutable list per hook point.
type Hooks struct {
	mu    sync.Mutex
	lists [NumHooks]atomic.Pointer[[]Ops]
}

// Register adds ops; functions with equal priority run in registration order.
func (h *Hooks) Register(ops Ops) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var cur []Ops
	if p := h.lists[ops.Hook].Load(); p != nil {
		cur = *p
	}
	next := append(append([]Ops(nil), cur...), ops)
	sort.SliceStable(next, func(i, j int) bool { return next[i].Priority < next[j].Priority })
	h.lists[ops.Hook].Store(&next)
}

// Unregister removes the registration named name at hook.
func (h *Hooks) Unregister(hook Hook, name string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.lists[hook].Load()
	if p == nil {
		return
	}
	var next []Ops
	for _, o := range *p {
		if o.Name != name {
			next = append(next, o)
		}
	}
	h.lists[hook].Store(&next)
}

// Active reports whether any function is registered at hook, so callers can
// skip building State on an empty hook (the kernel's static key).
func (h *Hooks) Active(hook Hook) bool {
	p := h.lists[hook].Load()
	return p != nil && len(*p) > 0
}

// Run calls the functions at hook in priority order until one does not
// accept (nf_hook_slow). A nil *Hooks accepts everything.
func (h *Hooks) Run(hook Hook, skb *buf.SKB, in, out int) Verdict {
	if h == nil {
		return Accept()
	}
	p := h.lists[hook].Load()
	if p == nil || len(*p) == 0 {
		return Accept()
	}
	// The State goes by value: three words, where a pointer passed
	// through a func value would escape and need a pool.
	st := State{Hook: hook, In: in, Out: out}
	v := Accept()
	for _, o := range *p {
		if v = o.Fn(skb, st); !v.Accepted() {
			break
		}
	}
	return v
}
